"""The report's figures, drawn with matplotlib (Agg) and returned as PNG data URIs so the HTML stays one file.

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies) and lines also differ
in marker, so nothing depends on colour alone. Intervals are always drawn - as error bars or bands - because a point
estimate without its uncertainty invites over-reading. Each function is given non-empty data; deciding that a section
has nothing to draw is the renderer's job, so no empty figure is ever produced.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are rendered on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from PIL import Image  # noqa: E402

from medvision.evaluation.overlay import overlay  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = [
    "PALETTE",
    "calibration_reliability",
    "reliability_by_group",
    "cohort_counts",
    "data_efficiency_curve",
    "deferral_curve",
    "image_uri",
    "learning_curves",
    "ood_histograms",
    "overlay_uri",
    "performance_forest",
    "promise_forest",
    "subgroup_forest",
]

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_RC: dict[RcKeyType, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    # Class, subgroup and stage names are user text: "a$\frac{$b" must print as typed, not be parsed as
    # mathtext (which raised and killed the report) or handed to LaTeX.
    "text.parse_math": False,
    "text.usetex": False,
}


def _uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})  # layout is tight_layout's job
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _err(df: pd.DataFrame) -> np.ndarray:
    """Asymmetric error-bar lengths from low/high; NaN intervals draw no bar."""
    v, lo, hi = (pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in ("value", "low", "high"))
    return np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0).clip(min=0)


def cohort_counts(counts: pd.DataFrame, splits: list[str], classes: list[str]) -> str:
    """Stacked bars: images per split, split by class (columns ``split``, ``label``, ``images``)."""
    wide = counts.assign(split=counts["split"].astype(str), label=counts["label"].astype(str)).pivot_table(
        index="split", columns="label", values="images", aggfunc="sum", fill_value=0
    )
    wide = wide.reindex(index=splits, columns=classes, fill_value=0)
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(0.9 * len(splits) + 3.0, 3.2))
        bottom = np.zeros(len(splits))
        hatches = ["", "//", "..", "xx", "\\\\", "oo", "++", "--"]
        for i, k in enumerate(classes):
            v = wide[k].to_numpy(float)
            ax.bar(splits, v, bottom=bottom, color=PALETTE[i % 8], hatch=hatches[i % 8], edgecolor="white", label=k)
            bottom += v
        ax.set(ylabel="images", title="Images per split and class")
        ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
        fig.tight_layout()
        return _uri(fig)


def learning_curves(curves: pd.DataFrame) -> str:
    """One panel per logged metric, one line per stage (columns ``stage``, ``epoch``, ``metric``, ``value``)."""
    metrics = list(dict.fromkeys(curves["metric"].astype(str)))
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            d = curves[curves["metric"].astype(str) == metric]
            for i, (stage, g) in enumerate(d.groupby("stage", sort=False)):
                g = g.sort_values("epoch")
                ax.plot(g["epoch"], g["value"], marker=_MARKERS[i % 8], ms=3, color=PALETTE[i % 8], label=str(stage))
            ax.set(title=metric.replace("_", " "), xlabel="epoch")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        return _uri(fig)


def performance_forest(table: pd.DataFrame, metric_labels: dict[str, str]) -> str:
    """Forest plot: one panel per metric, one row per evaluation set, point estimate with its 95% CI."""
    metrics = list(dict.fromkeys(table["metric"].astype(str)))
    sets = list(dict.fromkeys(table["eval_set"].astype(str)))
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(2.8 * len(metrics), 0.5 * len(sets) + 1.4), squeeze=False, sharey=True
        )
        for ax, metric in zip(axes[0], metrics):
            d = table[table["metric"].astype(str) == metric]
            d = d.drop_duplicates("eval_set").set_index(d["eval_set"].drop_duplicates().astype(str)).reindex(sets)
            y = np.arange(len(sets))
            for i, s in enumerate(sets):
                row = d.loc[[s]]
                ax.errorbar(row["value"], [y[i]], xerr=_err(row), fmt=_MARKERS[i % 8], color=PALETTE[i % 8], capsize=3)
            ax.set(title=metric_labels.get(metric, metric), yticks=y, yticklabels=sets)
        axes[0][0].invert_yaxis()  # shared y: first set on top, in table order
        fig.tight_layout()
        return _uri(fig)


def calibration_reliability(rel: pd.DataFrame) -> str:
    """Reliability diagram: observed accuracy vs mean confidence per bin, one line per calibration method; marker
    area grows with the bin's count so sparse bins are not over-read."""
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(4.2, 4.0))
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        rel = rel[rel["count"] > 0].dropna(subset=["confidence", "accuracy"])  # empty bins have no point
        for i, (method, g) in enumerate(rel.groupby("method", sort=False)):
            g = g.sort_values("confidence")
            size = 15 + 120 * g["count"].to_numpy(float) / max(float(rel["count"].max()), 1.0)
            ax.plot(g["confidence"], g["accuracy"], color=PALETTE[i % 8], lw=1.2, label=str(method))
            ax.scatter(g["confidence"], g["accuracy"], s=size, color=PALETTE[i % 8], marker=_MARKERS[i % 8], zorder=3)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="mean predicted confidence",
            ylabel="observed accuracy",
            title="Reliability diagram",
        )
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        return _uri(fig)


def reliability_by_group(rel: pd.DataFrame, max_panels: int = 12) -> str:
    """One small reliability diagram per subgroup (the whole set first), each bin's observed accuracy with its 95%
    patient-level interval: a model calibrated on average can be over-confident for one sex or one site, and the
    interval says whether a bin's gap is more than its few patients."""
    keys = list(dict.fromkeys(zip(rel["attribute"].astype(str), rel["group"].astype(str))))[:max_panels]
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False, sharex=True, sharey=True)
        for ax, (attribute, group) in zip(axes.flat, keys):
            d = rel[(rel["attribute"].astype(str) == attribute) & (rel["group"].astype(str) == group)]
            d = d.dropna(subset=["accuracy"]).sort_values("confidence")
            ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
            low = (d["accuracy"] - d["accuracy_low"]).clip(lower=0).fillna(0)
            high = (d["accuracy_high"] - d["accuracy"]).clip(lower=0).fillna(0)
            ax.errorbar(d["confidence"], d["accuracy"], yerr=[low, high], fmt="o-", ms=3, lw=1, capsize=2,
                        color=PALETTE[0])  # fmt: skip
            ax.set_title("all" if attribute == "all" else f"{attribute} = {group}", fontsize=9)
            ax.set(xlim=(0, 1), ylim=(0, 1))
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("confidence")
        for ax in axes[:, 0]:
            ax.set_ylabel("accuracy")
        fig.tight_layout()
        return _uri(fig)


def ood_histograms(scores: pd.DataFrame, detectors: list[str]) -> str:
    """Score distributions of inliers vs outliers, one panel per detector (higher score = more unusual)."""
    cols = min(3, len(detectors))
    rows = -(-len(detectors) // cols)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
        for ax in axes.flat[len(detectors) :]:
            ax.set_visible(False)
        for ax, det in zip(axes.flat, detectors):
            d = scores[scores["detector"].astype(str) == det]
            s = d["score"].to_numpy(float)
            out = d["is_outlier"].to_numpy(bool)
            bins = np.histogram_bin_edges(s, bins=30)
            ax.hist(s[~out], bins=bins, density=True, alpha=0.6, color=PALETTE[0], label="inliers")
            ax.hist(s[out], bins=bins, density=True, histtype="step", lw=2, color=PALETTE[5], label="outliers")
            ax.set(title=det, xlabel="OOD score (higher = more unusual)", ylabel="density")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        return _uri(fig)


def deferral_curve(deferral: pd.DataFrame, referral_rate: float) -> str:
    """Left: share of outliers caught vs share of cases referred; right: mean cost per case vs referral share.
    The dotted line marks the summary's operating point."""
    with plt.rc_context(_RC):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.6, 3.2))
        for i, (det, g) in enumerate(deferral.groupby("detector", sort=False)):
            g = g.sort_values("referral_rate")
            kw = {"color": PALETTE[i % 8], "marker": _MARKERS[i % 8], "ms": 3, "label": str(det)}
            a1.plot(g["referral_rate"], 1 - g["outliers_missed"], **kw)
            a2.plot(g["referral_rate"], g["mean_cost"], **kw)
        for ax in (a1, a2):
            ax.axvline(referral_rate, ls=":", color="grey")
            ax.set_xlabel("share of cases referred")
        a1.set(ylabel="share of outliers caught", ylim=(0, 1.02), title="Outliers caught")
        a2.set(ylabel="mean cost per case", title="Mean cost")
        a1.legend(fontsize=8)
        fig.tight_layout()
        return _uri(fig)


def promise_forest(panels: list[tuple[pd.DataFrame, float, str]]) -> str:
    """One panel per promise: the measured value per row (``label``, ``value``, ``low``, ``high``, ``held_out``)
    with its 95% CI against the promised level (dashed). Held-out rows (where the promise does not carry over) are
    hollow squares in another colour, so they are never read as meeting it."""
    rows = max(len(t) for t, _, _ in panels)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.34 * rows + 1.4), squeeze=False)
        for ax, (table, promise, name) in zip(axes[0], panels):
            ax.axvline(promise, color="grey", ls="--", lw=1, label=f"promised {promise:.0%}")
            err = _err(table)
            held = table["held_out"].to_numpy(bool)
            for i in range(len(table)):
                c = PALETTE[5] if held[i] else PALETTE[0]
                ax.errorbar(
                    table["value"].iloc[i],
                    i,
                    xerr=err[:, i : i + 1],
                    fmt="s" if held[i] else "o",
                    color=c,
                    mfc="white" if held[i] else c,
                    capsize=3,
                    label="held-out: not promised" if held[i] and not held[:i].any() else None,
                )
            ax.set(yticks=range(len(table)), yticklabels=list(table["label"]), xlabel=name, xlim=(-0.02, 1.02))
            ax.set_title(name)
            ax.invert_yaxis()
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return _uri(fig)


def subgroup_forest(table: pd.DataFrame, overall: float, metric: str) -> str:
    """Forest plot of the metric per subgroup with 95% CIs against the overall value; flagged groups are hollow."""
    labels = [f"{a} = {g}" for a, g in zip(table["attribute"], table["group"])]
    flagged = table["flag"].fillna("").astype(str).str.strip().ne("").to_numpy()
    attrs = list(dict.fromkeys(table["attribute"].astype(str)))
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(5.6, 0.32 * len(table) + 1.2))
        ax.axvline(overall, color="grey", ls="--", lw=1, label=f"overall {overall:.2f}")
        err = _err(table)
        for i in range(len(table)):
            c = PALETTE[attrs.index(str(table["attribute"].iloc[i])) % 8]
            ax.errorbar(
                table["value"].iloc[i],
                i,
                xerr=err[:, i : i + 1],
                fmt="o",
                color=c,
                capsize=3,
                mfc="white" if flagged[i] else c,
            )
        ax.set(yticks=range(len(table)), yticklabels=labels, xlabel=metric, title=f"{metric} by subgroup")
        ax.invert_yaxis()
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        return _uri(fig)


def data_efficiency_curve(curve: pd.DataFrame, metric: str) -> str:
    """Metric vs labelled fraction (log axis), one line and CI band per starting point."""
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        for i, (start, g) in enumerate(curve.groupby("start", sort=False)):
            g = g.sort_values("label_fraction")
            c = PALETTE[i % 8]
            ax.plot(g["label_fraction"], g["value"], marker=_MARKERS[i % 8], color=c, label=str(start))
            ax.fill_between(g["label_fraction"], g["low"], g["high"], color=c, alpha=0.2)
        ax.set_xscale("log")
        ax.set(xlabel="fraction of labelled training patients", ylabel=metric, title=f"{metric} vs labelled data")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0%}"))
        ax.legend(fontsize=8)
        fig.tight_layout()
        return _uri(fig)


# -- saliency images ------------------------------------------------------------------------------


def _rgb(image: np.ndarray | bytes) -> np.ndarray:
    if isinstance(image, bytes):
        return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def image_uri(image: np.ndarray | bytes) -> str:
    """A uint8 array or PNG/JPEG bytes as a data URI (bytes are embedded as given)."""
    if isinstance(image, bytes):
        mime = "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"
        return f"data:{mime};base64," + base64.b64encode(image).decode("ascii")
    buf = io.BytesIO()
    Image.fromarray(_rgb(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay_uri(image: np.ndarray | bytes, heatmap: np.ndarray | bytes) -> str:
    """An attribution map's magnitude blended over the image (:func:`medvision.evaluation.overlay.overlay`: the
    blend the DICOM saliency images of ``medvision predict --saliency`` show too).

    A 3-D array or bytes is taken as an overlay already made by the caller and embedded as given.
    """
    if isinstance(heatmap, bytes) or heatmap.ndim == 3:
        return image_uri(heatmap)
    return image_uri(overlay(_rgb(image), heatmap))
