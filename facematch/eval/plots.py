"""PNG plots of an evaluation (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _thin(curve: M.Roc, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """A ROC reduced to at most ``max_points`` points, dense where FMR is small (log axis)."""
    fmr, tar = curve.fmr, curve.tar
    if fmr.size <= max_points:
        return fmr, tar
    grid = np.geomspace(max(fmr[fmr > 0].min(), 1e-12), 1.0, max_points)
    idx = np.unique(np.clip(np.searchsorted(fmr, grid, side="right") - 1, 0, fmr.size - 1))
    return fmr[idx], tar[idx]


def roc_plot(
    curves: Sequence[tuple[str, M.Roc]], points: Sequence[M.OperatingPoint], path: Path, title: str = "ROC"
) -> Path:
    """TAR against FMR on a log axis; the FMR floor (1/impostors) shaded, operating points marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    floor = 1.0
    for label, curve in curves:
        fmr, tar = _thin(curve)
        keep = fmr > 0
        ax.step(fmr[keep], tar[keep], where="post", label=f"{label} (AUC {M.auc(curve):.4f})")
        floor = min(floor, 1.0 / curve.n_impostor)
    for p in points:
        if p.resolvable and p.tar is not None:
            ax.plot([p.target_fmr], [p.tar], "o", color="black", ms=4)
            ax.annotate(
                f"{p.tar:.3f}@{p.target_fmr:g}",
                (p.target_fmr, p.tar),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=8,
            )
    ax.axvspan(floor / 10, floor, color="0.85", label=f"below 1/impostors ({floor:.1e})")
    ax.set_xscale("log")
    ax.set_xlim(floor / 10, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false-match rate, FMR (log)")
    ax.set_ylabel("true accept rate, TAR = 1 − FNMR")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def histogram_plot(
    genuine: np.ndarray, impostor: np.ndarray, thresholds: dict[str, float], path: Path, title: str = "Similarity"
) -> Path:
    """Genuine and impostor similarity densities with the chosen thresholds as vertical lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    lo = float(min(np.min(genuine), np.min(impostor)))
    hi = float(max(np.max(genuine), np.max(impostor)))
    bins = np.linspace(lo, hi, 80)
    ax.hist(impostor, bins=bins, density=True, alpha=0.55, label=f"impostor (n={impostor.size:,})", color="tab:red")
    ax.hist(genuine, bins=bins, density=True, alpha=0.55, label=f"genuine (n={genuine.size:,})", color="tab:blue")
    styles = ["--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    colours = ["black", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive"]
    for k, (label, thr) in enumerate(thresholds.items()):
        ax.axvline(
            thr, color=colours[k % len(colours)], ls=styles[k % len(styles)], lw=1.2, label=f"{label}: {thr:.3f}"
        )
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def fairness_plot(fair: M.Fairness, path: Path, group_col: str = "group") -> Path:
    """Per-group FNMR and FMR at the shared threshold, with 95% Wilson intervals."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.8), dpi=110)
    names = [g.group for g in fair.groups]
    x = np.arange(len(names))
    for ax, attr, n_attr, title in (
        (axes[0], "fnmr", "n_genuine", "FNMR"),
        (axes[1], "fmr", "n_impostor", "FMR"),
    ):
        vals, lo, hi = [], [], []
        for g in fair.groups:
            rate = getattr(g, attr)
            n = getattr(g, n_attr)
            rate = 0.0 if rate is None else rate
            a, b = M.wilson_interval(int(round(rate * n)), n)
            vals.append(rate)
            lo.append(max(rate - a, 0.0))
            hi.append(max(b - rate, 0.0))
        ax.bar(x, vals, yerr=[lo, hi], capsize=4, color="tab:gray")
        ax.set_xticks(x, names)
        ax.set_xlabel(group_col)
        ax.set_title(f"{title} at {fair.shared_threshold:.3f}")
    fig.suptitle(f"per-group errors at one threshold (target FMR {fair.target_fmr:g}); bars: 95% Wilson CI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def calibration_plot(
    similarity: Sequence[float], fmr: Sequence[float], thresholds: dict[str, float], path: Path
) -> Path:
    """The calibration curve: observed impostor rate against similarity (log y)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.step(similarity, fmr, where="post")
    for key, thr in thresholds.items():
        ax.axvline(thr, color="black", ls="--", lw=0.8)
        ax.annotate(f"FMR {key}: {thr:.3f}", (thr, float(key)), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("cosine similarity threshold")
    ax.set_ylabel("false match rate  P(impostor >= s)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def erc_plot(section: Any, path: Path) -> Path:
    """Error versus reject: FNMR against the share of lowest-quality images rejected, one line per measure.

    The unified score is drawn thickest, random rejection dashed black (the baseline).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.6, 4.8), dpi=110)
    x = 100.0 * np.asarray(section.reject, np.float64)
    others = [c for c in section.curves if c.measure not in ("random",) and not c.measure.startswith("unified")]
    palette = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(others), 2)))  # red is the unified score
    for c, colour in zip(others, palette, strict=False):
        y = np.array([np.nan if v is None else v for v in c.fnmr], np.float64)
        ax.plot(x, y, lw=1.1, color=colour, label=c.measure)
    for c in section.curves:
        y = np.array([np.nan if v is None else v for v in c.fnmr], np.float64)
        if c.measure == "random":
            ax.plot(x, y, color="black", ls="--", lw=1.6, label="random rejection (baseline)")
        elif c.measure.startswith("unified"):
            style = "-" if c.measure == "unified" else ":"
            ax.plot(x, y, color="tab:red", ls=style, lw=2.6, label=c.measure + (f"\n({c.note})" if c.note else ""))
    ax.set_xlabel("images rejected, lowest quality first (%)")
    ax.set_ylabel(f"FNMR at the FMR {section.fmr:g} threshold ({section.threshold:.3f})")
    ax.set_title(f"Error versus reject: {section.n_genuine_pairs:,} genuine comparisons, {section.n_images} images")
    ax.set_xlim(0.0, float(x[-1]))
    ax.set_ylim(bottom=0.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["calibration_plot", "erc_plot", "fairness_plot", "histogram_plot", "roc_plot"]
