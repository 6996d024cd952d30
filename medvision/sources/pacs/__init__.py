"""PACS as a cohort source: pull a research request's instances into a local content-addressed store.

The build never talks to a PACS: ``pull`` fills a folder, and the ordinary folder build (index, labels,
quarantine, pseudonyms, splits, cache) runs on it unchanged. Two transports, one contract
(:class:`~medvision.sources.pacs.source.Source`): DICOMweb (QIDO-RS + WADO-RS) and DIMSE (C-FIND + C-GET).
"""

from medvision.sources.pacs.errors import PacsAuthError, PacsError, PacsNoMatchError, PacsUnreachableError
from medvision.sources.pacs.pull import PullSummary, pull, pull_cohort

__all__ = [
    "PacsAuthError",
    "PacsError",
    "PacsNoMatchError",
    "PacsUnreachableError",
    "PullSummary",
    "pull",
    "pull_cohort",
]
