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
        ax.step(
            fmr[keep],
            tar[keep],
            where="post",
            label=f"{label} (AUC {M.auc(curve):.4f}; n = {curve.n_genuine:,} gen / {curve.n_impostor:,} imp)",
        )
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


def merge_thresholds(thresholds: dict[str, float], tol: float = 5e-7) -> list[tuple[str, float]]:
    """Thresholds with equal values drawn once, their labels joined (``FMR 0.001 = shared (fairness)``)."""
    merged: list[tuple[list[str], float]] = []
    for label, thr in sorted(thresholds.items(), key=lambda kv: kv[1]):
        if merged and abs(merged[-1][1] - thr) <= tol:
            merged[-1][0].append(label)
        else:
            merged.append(([label], float(thr)))
    return [(" = ".join(labels), thr) for labels, thr in merged]


def histogram_plot(
    genuine: np.ndarray,
    impostor: np.ndarray,
    thresholds: dict[str, float],
    path: Path,
    title: str = "Similarity scores",
) -> Path:
    """Left: genuine and impostor densities (linear). Right: the error rates against the threshold on a
    log axis, FMR(t) = P(impostor >= t) and FNMR(t) = P(genuine < t), where the tails that set the
    thresholds are visible. Thresholds with the same value are drawn once with their labels joined."""
    plt = _pyplot()
    fig, (ax, tail) = plt.subplots(1, 2, figsize=(11.0, 4.4), dpi=110, gridspec_kw={"width_ratios": [1.15, 1.0]})
    lo = float(min(np.min(genuine), np.min(impostor)))
    hi = float(max(np.max(genuine), np.max(impostor)))
    bins = np.linspace(lo, hi, 80)
    ax.hist(impostor, bins=bins, density=True, alpha=0.55, label=f"impostor (n={impostor.size:,})", color="tab:red")
    ax.hist(genuine, bins=bins, density=True, alpha=0.55, label=f"genuine (n={genuine.size:,})", color="tab:blue")
    styles = ["--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    colours = ["black", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:olive"]
    lines = merge_thresholds(thresholds)
    for k, (label, thr) in enumerate(lines):
        style = {"color": colours[k % len(colours)], "ls": styles[k % len(styles)], "lw": 1.2}
        ax.axvline(thr, label=f"{label}: {thr:.3f}", **style)
        tail.axvline(thr, **style)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7)

    imp = np.sort(np.asarray(impostor, np.float64))
    gen = np.sort(np.asarray(genuine, np.float64))
    grid = np.linspace(lo, hi, 400)
    fmr = (imp.size - np.searchsorted(imp, grid, side="left")) / imp.size
    fnmr = np.searchsorted(gen, grid, side="left") / gen.size
    keep_f, keep_n = fmr > 0, fnmr > 0
    tail.step(grid[keep_f], fmr[keep_f], where="post", color="tab:red", label="FMR(t) = P(impostor ≥ t)")
    tail.step(grid[keep_n], fnmr[keep_n], where="post", color="tab:blue", label="FNMR(t) = P(genuine < t)")
    floor = 1.0 / imp.size
    tail.axhline(floor, color="0.6", lw=0.8, ls=":", label=f"1/impostors = {floor:.1e}")
    tail.set_yscale("log")
    tail.set_ylim(min(floor, 1.0 / gen.size) / 3, 1.5)
    tail.set_xlabel("threshold t (cosine similarity)")
    tail.set_ylabel("error rate (log)")
    tail.set_title("tails: error rates at each threshold")
    tail.grid(True, which="both", alpha=0.3)
    tail.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def det_plot(
    curves: Sequence[tuple[str, M.Roc]], points: Sequence[M.OperatingPoint], path: Path, title: str = "DET"
) -> Path:
    """Detection error trade-off: FNMR against FMR, both on log axes; operating points and the EER marked.

    The region below 1 / impostors (FMR) is shaded: no point there is measured.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=110)
    floor_fmr, floor_fnmr = 1.0, 1.0
    for label, curve in curves:
        fmr, tar = _thin(curve)
        fnmr = 1.0 - tar
        keep = (fmr > 0) & (fnmr > 0)
        e = M.eer(curve)
        ax.step(
            fmr[keep],
            fnmr[keep],
            where="post",
            label=f"{label} (EER {100 * e.eer:.2f}%; n = {curve.n_genuine:,} gen / {curve.n_impostor:,} imp)",
        )
        if e.eer > 0:
            ax.plot([e.eer], [e.eer], "s", color="tab:red", ms=4)
        if not keep.any():  # no threshold makes both errors: nothing to draw on log axes
            ax.text(
                0.5,
                0.5,
                f"{label}: no threshold gives both errors\n(genuine and impostor scores do not overlap)",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=9,
            )
        floor_fmr = min(floor_fmr, 1.0 / curve.n_impostor)
        floor_fnmr = min(floor_fnmr, 1.0 / curve.n_genuine)
    for p in points:
        if p.resolvable and p.fnmr is not None and p.fnmr > 0:
            ax.plot([p.target_fmr], [p.fnmr], "o", color="black", ms=4)
            ax.annotate(
                f"FNMR {100 * p.fnmr:.2f}% @ FMR {p.target_fmr:g}",
                (p.target_fmr, p.fnmr),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
    ax.plot([floor_fmr, 1.0], [floor_fmr, 1.0], color="0.7", lw=0.8, ls="--", label="FMR = FNMR")
    ax.axvspan(floor_fmr / 10, floor_fmr, color="0.88", label=f"FMR below 1/impostors ({floor_fmr:.1e})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor_fmr / 10, 1.0)
    ax.set_ylim(floor_fnmr / 3, 1.0)
    ax.set_xlabel("false-match rate, FMR (log)")
    ax.set_ylabel("false non-match rate, FNMR (log)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def cmc_plot(cmc: Sequence[float], path: Path, *, n_probes: int, n_gallery: int, title: str = "CMC") -> Path:
    """Closed-set identification rate against rank k (CMC), with rank-1 and rank-5 labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ranks = np.arange(1, len(cmc) + 1)
    ax.plot(ranks, cmc, marker="o", ms=3, lw=1.2, label=f"{n_probes:,} probes, gallery of {n_gallery} identities")
    for k in (1, 5):
        if k <= len(cmc):
            ax.annotate(
                f"rank-{k}: {100 * cmc[k - 1]:.2f}%",
                (k, cmc[k - 1]),
                textcoords="offset points",
                xytext=(6, -14),
                fontsize=8,
            )
    lowest = min(cmc) if len(cmc) else 0.0
    ax.set_ylim(max(0.0, lowest - 0.05 * (1.0 - lowest) - 0.01), 1.005)
    ax.set_xlim(0.5, len(cmc) + 0.5)
    ax.set_xlabel("rank k")
    ax.set_ylabel("identification rate (true identity within the top k)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def dir_fpir_plot(
    curve: M.DirCurve, points: Sequence[M.DirPoint], path: Path, title: str = "Open-set identification"
) -> Path:
    """DIR against FPIR (log x): how many enrolled people are found, at each rate of strangers accepted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    fpir, dirs = np.asarray(curve.fpir), np.asarray(curve.dir)
    keep = fpir > 0
    ax.step(
        fpir[keep],
        dirs[keep],
        where="post",
        label=f"{curve.n_mated:,} mated / {curve.n_nonmated:,} non-mated probes",
    )
    floor = 1.0 / curve.n_nonmated
    for p in points:
        if p.resolvable and p.dir is not None:
            ax.plot([p.target_fpir], [p.dir], "o", color="black", ms=4)
            ax.annotate(
                f"DIR {100 * p.dir:.2f}% @ FPIR {p.target_fpir:g}",
                (p.target_fpir, p.dir),
                textcoords="offset points",
                xytext=(5, -12),
                fontsize=8,
            )
    ax.axvspan(floor / 10, floor, color="0.88", label=f"FPIR below 1/non-mated ({floor:.1e})")
    ax.set_xscale("log")
    ax.set_xlim(floor / 10, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false-positive identification rate, FPIR (log)")
    ax.set_ylabel("detection and identification rate, DIR")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def fairness_plot(fair: M.Fairness, path: Path, group_col: str = "group") -> Path:
    """Per-group FNMR and FMR at the shared threshold, with 95% Wilson intervals and each bar's n."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.2), dpi=110)
    names = [g.group for g in fair.groups]
    x = np.arange(len(names))
    for ax, attr, n_attr, title, ylabel, pairs in (
        (axes[0], "fnmr", "n_genuine", "FNMR", "false non-match rate, FNMR", "genuine"),
        (axes[1], "fmr", "n_impostor", "FMR", "false-match rate, FMR", "impostor"),
    ):
        vals, lo, hi, ns = [], [], [], []
        for g in fair.groups:
            rate = getattr(g, attr)
            n = getattr(g, n_attr)
            rate = 0.0 if rate is None else rate
            a, b = M.wilson_interval(int(round(rate * n)), n)
            vals.append(rate)
            lo.append(max(rate - a, 0.0))
            hi.append(max(b - rate, 0.0))
            ns.append(n)
        ax.bar(x, vals, yerr=[lo, hi], capsize=4, color="tab:gray")
        top = max((v + h for v, h in zip(vals, hi, strict=True)), default=0.0) or 1.0
        for xi, v, h, n in zip(x, vals, hi, ns, strict=True):
            text = f"{100 * v:.2f}%" if attr == "fnmr" else f"{v:.1e}"
            ax.annotate(
                f"{text}\nn={n:,} {pairs}",
                (xi, v + h),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=7,
            )
        ax.set_ylim(0.0, top * 1.3)
        ax.set_xticks(x, names)
        ax.set_xlabel(group_col)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} at threshold {fair.shared_threshold:.3f}")
    fig.suptitle(
        f"per-group errors at one threshold (target FMR {fair.target_fmr:g}); bars: 95% Wilson CI; "
        "n: pairs within the group",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def calibration_plot(
    similarity: Sequence[float],
    fmr: Sequence[float],
    thresholds: dict[str, float],
    path: Path,
    n_impostor: int | None = None,
) -> Path:
    """The calibration curve: observed impostor rate against similarity (log y), thresholds marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    label = f"n = {n_impostor:,} impostor pairs" if n_impostor else None
    ax.step(similarity, fmr, where="post", label=label)
    for key, thr in thresholds.items():
        ax.axvline(thr, color="black", ls="--", lw=0.8)
        ax.annotate(f"FMR {key}: {thr:.3f}", (thr, float(key)), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if n_impostor:
        ax.axhline(1.0 / n_impostor, color="0.6", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("cosine similarity threshold")
    ax.set_ylabel("false-match rate  P(impostor ≥ s) (log)")
    ax.set_title("impostor calibration curve")
    ax.grid(True, which="both", alpha=0.3)
    if label:
        ax.legend(fontsize=8)
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


__all__ = [
    "calibration_plot",
    "cmc_plot",
    "det_plot",
    "dir_fpir_plot",
    "erc_plot",
    "fairness_plot",
    "histogram_plot",
    "merge_thresholds",
    "roc_plot",
]
