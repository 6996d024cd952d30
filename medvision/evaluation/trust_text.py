"""Plain-language sentences for the report's "When to trust this model" section, built from the trust tables.

Pure functions from :func:`~medvision.evaluation.conformal.conformal_table` and
:func:`~medvision.evaluation.risk_control.abstention_table` rows (several sets concatenated) to text a clinician
reads: what was promised, what was seen on the test patients and per subgroup, and, for every held-out set, that
the promise does not carry over and how far it missed. Numbers are rounded for reading; the tables keep them exact.

Example:
    >>> import pandas as pd
    >>> rows = [
    ...     dict(method="marginal", set="test", attribute="all", group="all", flag="", target=0.9, coverage=0.91,
    ...          coverage_low=0.88, coverage_high=0.93, mean_set_size=1.4, guarantee="holds"),
    ...     dict(method="marginal", set="test", attribute="sex", group="F", flag="", target=0.9, coverage=0.92,
    ...          coverage_low=0.88, coverage_high=0.95, mean_set_size=1.3, guarantee="not_promised"),
    ...     dict(method="marginal", set="test", attribute="sex", group="M", flag="", target=0.9, coverage=0.89,
    ...          coverage_low=0.85, coverage_high=0.93, mean_set_size=1.5, guarantee="not_promised"),
    ...     dict(method="marginal", set="site_ood", attribute="all", group="all", flag="", target=0.9,
    ...          coverage=0.74, coverage_low=0.69, coverage_high=0.79, mean_set_size=1.2,
    ...          guarantee="does_not_carry_over")]
    >>> print(coverage_sentence(pd.DataFrame(rows)))  # doctest: +NORMALIZE_WHITESPACE
    At a 90% target, the sets covered 91% (88–93%) of test patients, with 1.4 classes per set on average; women
    92%, men 89%; at the held-out site 74%: the guarantee does not hold there (16 points short).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

__all__ = ["abstention_sentence", "coverage_sentence"]

#: How a set is named in a sentence.
SET_PHRASES = {
    "test": "test patients",
    "val": "validation patients",
    "site_ood": "the held-out site",
    "condition_ood": "the held-out conditions",
}
#: How a subgroup value is named (manifest sex codes); anything else is written as stored.
GROUP_WORDS = {"F": "women", "M": "men", "O": "other sex"}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _interval(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f" ({100 * low:.0f}–{100 * high:.0f}%)"


def _points(x: float) -> str:
    return f"{abs(100 * x):.0f} points"


def _whole(table: pd.DataFrame, set_name: str) -> pd.Series | None:
    rows = table[(table["set"] == set_name) & (table["attribute"] == "all")]
    return None if rows.empty else rows.iloc[0]


def coverage_sentence(
    table: pd.DataFrame,
    *,
    method: str = "marginal",
    reference: str = "test",
    attribute: str = "sex",
    words: Mapping[str, str] = GROUP_WORDS,
) -> str:
    """One sentence on the conformal sets of ``method``: coverage of the ``reference`` set's patients with its
    interval, per group of ``attribute``, and at every other set, saying plainly where the promise does not hold.

    Args:
        table: :func:`conformal_table` rows of one or more sets.
        method: ``marginal`` or a Mondrian taxonomy name.
        reference: the exchangeable set the headline is about.
        attribute: the subgroup column to name groups of (unflagged groups only).
        words: how group values read (``F`` -> ``women``).
    """
    rows = table[table["method"] == method]
    ref = _whole(rows, reference)
    if ref is None:
        return f"No conformal sets were evaluated on {SET_PHRASES.get(reference, reference)}."
    if ref["guarantee"] == "vacuous":
        return (
            f"Too few validation patients to calibrate the sets at a {_pct(ref['target'])} target: every set holds "
            "all classes, so the sets carry no information and guarantee nothing."
        )
    parts = [
        f"At a {_pct(ref['target'])} target, the sets covered {_pct(ref['coverage'])}"
        f"{_interval(ref['coverage_low'], ref['coverage_high'])} of {SET_PHRASES.get(reference, reference)}, "
        f"with {ref['mean_set_size']:.1f} classes per set on average"
    ]
    if ref["guarantee"] == "below_target":
        parts[0] += (
            ", below the target beyond sampling error: the test patients may not come from the validation "
            "patients' population"
        )
    elif ref["coverage"] < ref["target"]:
        parts[0] += ", below the target but within sampling error of it"
    groups = rows[(rows["set"] == reference) & (rows["attribute"] == attribute) & (rows["flag"] == "")]
    if len(groups):
        parts.append(", ".join(f"{words.get(g, g)} {_pct(c)}" for g, c in zip(groups["group"], groups["coverage"])))
    for set_name in [s for s in dict.fromkeys(rows["set"]) if s != reference]:
        row = _whole(rows, set_name)
        if row is None or not math.isfinite(row["coverage"]):
            continue
        where = SET_PHRASES.get(set_name, set_name)
        if row["guarantee"] == "does_not_carry_over" and row["coverage"] < row["target"]:
            parts.append(
                f"at {where} {_pct(row['coverage'])}: the guarantee does not hold there "
                f"({_points(row['target'] - row['coverage'])} short)"
            )
        elif row["guarantee"] == "does_not_carry_over":
            parts.append(f"at {where} {_pct(row['coverage'])}, though nothing guaranteed it there")
        else:
            parts.append(f"at {where} {_pct(row['coverage'])}")
    return "; ".join(parts) + "."


def abstention_sentence(
    table: pd.DataFrame, *, reference: str = "test", positive: str = "the positive class", ood: str | None = None
) -> str:
    """One sentence on the referral rule: what it refers, how much of the ``reference`` set it answers, the
    controlled risk with its interval against α, and at every other set how far the promise missed.

    Args:
        table: :func:`abstention_table` rows of one or more sets.
        reference: the exchangeable set the headline is about.
        positive: the positive class's name (for ``on="miss"``).
        ood: the OOD score's name when the rule also refers on it.
    """
    ref = _whole(table, reference)
    if ref is None:
        return f"The referral rule was not evaluated on {SET_PHRASES.get(reference, reference)}."
    alpha, on = float(ref["alpha"]), str(ref["on"])
    what = "errors among answered cases" if on == "error" else f"missed cases of {positive}"
    if not math.isfinite(float(ref["threshold"])):
        return (
            f"No referral threshold could be certified from the validation patients for at most {_pct(alpha)} "
            f"{what}: every case is referred."
        )
    refers = f"confidence below {float(ref['threshold']):.2f}" + (f" or flagged by {ood}" if ood else "")
    risk_name = "its answers were wrong for" if on == "error" else f"it missed {positive} in"
    whose = "of the patients it answered" if on == "error" else f"of patients with {positive}"
    lead = (
        f"Referring cases with {refers}, the model answered {_pct(1 - ref['referral_rate'])} of "
        f"{SET_PHRASES.get(reference, reference)}' images; {risk_name} "
    )
    if ref["flag"]:
        parts = [lead + "none of them (nothing to measure)"]
    else:
        if ref["guarantee"] != "holds":
            verdict = f"above the promised {_pct(alpha)} beyond sampling error"
        elif ref["risk"] > alpha:
            verdict = f"above the promised {_pct(alpha)}, but within sampling error of it"
        else:
            verdict = f"within the promised {_pct(alpha)}"
        parts = [f"{lead}{_pct(ref['risk'])}{_interval(ref['risk_low'], ref['risk_high'])} {whose}, {verdict}"]
    for set_name in [s for s in dict.fromkeys(table["set"]) if s != reference]:
        row = _whole(table, set_name)
        if row is None or row["flag"] or not math.isfinite(row["risk"]):
            continue
        where = SET_PHRASES.get(set_name, set_name)
        seen = f"at {where} it answered {_pct(1 - row['referral_rate'])} and "
        if on == "error" and row["risk"] >= 1:
            seen += "every answered patient got a wrong answer"
        else:
            seen += f"{'was wrong for' if on == 'error' else 'missed'} {_pct(row['risk'])}"
        if row["risk"] > alpha:
            seen += f": the promise does not carry over there ({_points(row['risk'] - alpha)} over)"
        else:
            seen += ", though nothing promised it there"
        parts.append(seen)
    return "; ".join(parts) + "."
