"""Sources: where a cohort's files come from before the build reads them.

Each source writes an ordinary folder (images, a labels CSV, often a ``cohort.yaml``) that
:func:`medvision.cohort.build_cohort` then builds like any other: a PACS pull (``pacs/``), the synthetic
generator (``synth/``), the MedMNIST importer (``medmnist.py``). The build never imports a source, so a new one
(an XNAT or FHIR ImagingStudy client) is a module here and nothing in ``medvision.cohort`` changes.

Sources that read real headers (the PACS pull) see patient identifiers, as the cohort layer does; what they
write is read back through the build, which is where identifiers become pseudonyms.
"""
