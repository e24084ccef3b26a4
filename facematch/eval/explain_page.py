"""The report's "why did these fail" section: the hardest errors at the default threshold, explained.

``facematch eval aligned ... --explain N`` picks the ``N`` genuine pairs with the lowest
similarity below the threshold (the hardest false non-matches) and the ``N`` impostor pairs
with the highest similarity at or above it (the closest false matches), runs
:meth:`FaceMatcher.explain` on each and draws its figure into ``explain/`` of the report.
The threshold is the model card's default (its calibrated one at the default FMR); a model
without calibration uses the threshold at the target FMR measured on this set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import thresholds_at_fmr
from ..errors import CalibrationMissingError, FacematchError
from ..explain import RegionShare

logger = logging.getLogger(__name__)

EXPLAIN_DIR = "explain"


@dataclass(frozen=True)
class ExplainedPair:
    """One explained error: the two images, their similarity and the figure's file (in the report folder)."""

    kind: str  # "false non-match" or "false match"
    image1: str
    image2: str
    identity1: str
    identity2: str
    similarity: float
    method: str | None  # None when the explanation failed (``error`` says why)
    residual: float | None
    regions1: tuple[RegionShare, ...]
    regions2: tuple[RegionShare, ...]
    figure: str | None
    error: str | None = None


@dataclass(frozen=True)
class ExplainPage:
    """The explained errors at ``threshold`` and how many errors of each kind there were in all."""

    threshold: float
    threshold_source: str
    requested: int
    n_false_non_matches: int
    n_false_matches: int
    false_non_matches: list[ExplainedPair]
    false_matches: list[ExplainedPair]


def hardest_pairs(
    embeddings: np.ndarray, labels: np.ndarray, threshold: float, n: int, block: int = 1024
) -> tuple[list[tuple[int, int, float]], list[tuple[int, int, float]], int, int]:
    """The ``n`` lowest genuine pairs below ``threshold`` and ``n`` highest impostor pairs at or above it.

    Returns ``(false non-matches, false matches, count of each)``; pairs are ``(i, j, score)``
    with ``i < j``, hardest first. Memory is O(block × N), as for :func:`.metrics.all_pair_scores`.
    """
    emb = np.asarray(embeddings, np.float32)
    lab = np.asarray(labels).reshape(-1)
    total = len(emb)
    fnm: list[tuple[int, int, float]] = []
    fm: list[tuple[int, int, float]] = []
    n_fnm = n_fm = 0
    for start in range(0, total, block):
        stop = min(start + block, total)
        sims = np.clip(emb[start:stop] @ emb.T, -1.0, 1.0).astype(np.float64)
        rows, cols = np.triu_indices(stop - start, k=1, m=total - start)
        cols = cols + start
        s = sims[rows, cols]
        same = lab[rows + start] == lab[cols]
        miss = np.flatnonzero(same & (s < threshold))
        false = np.flatnonzero(~same & (s >= threshold))
        n_fnm += miss.size
        n_fm += false.size
        for picked, sign, out in ((miss, 1.0, fnm), (false, -1.0, fm)):
            if picked.size:
                top = picked[np.argsort(sign * s[picked], kind="stable")[:n]]
                out.extend((int(rows[k] + start), int(cols[k]), float(s[k])) for k in top)
    fnm.sort(key=lambda t: t[2])
    fm.sort(key=lambda t: -t[2])
    return fnm[:n], fm[:n], n_fnm, n_fm


def page_threshold(matcher: Any, impostor: np.ndarray, target_fmr: float) -> tuple[float, str]:
    """The card's default threshold, else this set's at ``target_fmr``; and where it came from."""
    try:
        thr, fmr = matcher.resolve_threshold()
        return float(thr), f"the model card's default, at FMR {fmr:g}" if fmr is not None else "the model card's"
    except CalibrationMissingError:
        thr = float(thresholds_at_fmr(impostor, [target_fmr])[0])
        return thr, f"measured on this set at FMR {target_fmr:g} (the card has no calibration)"


def explain_errors(
    matcher: Any,
    paths: Sequence[Path],
    labels: np.ndarray,
    identities: Sequence[str],
    embeddings: np.ndarray,
    impostor_scores: np.ndarray,
    out: Path,
    *,
    n: int,
    detect: bool,
    target_fmr: float,
) -> ExplainPage:
    """Explain the ``n`` hardest errors of each kind and draw them into ``out / explain``."""
    from ..explain_render import figure

    thr, source = page_threshold(matcher, impostor_scores, target_fmr)
    fnm, fm, n_fnm, n_fm = hardest_pairs(embeddings, labels, thr, n)
    folder = out / EXPLAIN_DIR
    folder.mkdir(parents=True, exist_ok=True)

    def run(kind: str, tag: str, pairs: list[tuple[int, int, float]]) -> list[ExplainedPair]:
        done = []
        for k, (i, j, score) in enumerate(pairs, start=1):
            a, b = Path(paths[i]), Path(paths[j])
            id1, id2 = str(identities[labels[i]]), str(identities[labels[j]])
            who = {"kind": kind, "image1": str(a), "image2": str(b), "identity1": id1, "identity2": id2}
            try:
                expl = matcher.explain(a, b, aligned=not detect, threshold=thr)
            except FacematchError as exc:  # an image that embeds but cannot be explained
                done.append(ExplainedPair(**who, similarity=score, method=None, residual=None, regions1=(),
                                          regions2=(), figure=None, error=exc.message))  # fmt: skip
                continue
            name = f"{tag}_{k:02d}.png"
            photos = (matcher.load(a), matcher.load(b))
            figure(expl, folder / name, photos=photos, labels=(f"{id1}/{a.name}", f"{id2}/{b.name}"))
            done.append(
                ExplainedPair(
                    **who,
                    similarity=expl.similarity,
                    method=expl.method,
                    residual=expl.residual,
                    regions1=expl.first.regions,
                    regions2=expl.second.regions,
                    figure=f"{EXPLAIN_DIR}/{name}",
                )
            )
        return done

    return ExplainPage(
        threshold=thr,
        threshold_source=source,
        requested=n,
        n_false_non_matches=n_fnm,
        n_false_matches=n_fm,
        false_non_matches=run("false non-match", "fnm", fnm),
        false_matches=run("false match", "fm", fm),
    )


def _shares(regions: Sequence[RegionShare]) -> str:
    return ", ".join(f"{r.region} {100 * r.share:+.0f}%" for r in regions) or "—"


def explain_markdown(page: ExplainPage) -> list[str]:
    """The report.md section of an :class:`ExplainPage`."""
    lines = [
        "## Why did these fail?",
        "",
        f"At the threshold {page.threshold:.4f} ({page.threshold_source}) this set has "
        f"{page.n_false_non_matches:,} false non-matches and {page.n_false_matches:,} false matches. "
        f"The {page.requested} hardest of each kind, explained (`facematch explain`): red cells speak for the "
        "match, blue ones against it.",
        "",
    ]
    for title, items in (
        ("Hardest false non-matches (same person, lowest similarity)", page.false_non_matches),
        ("Closest false matches (different people, highest similarity)", page.false_matches),
    ):
        lines += [f"### {title}", ""]
        if not items:
            lines += ["None at this threshold.", ""]
            continue
        for k, p in enumerate(items, start=1):
            head = (
                f"{k}. `{p.identity1}/{Path(p.image1).name}` vs `{p.identity2}/{Path(p.image2).name}`: "
                f"similarity {p.similarity:.4f}"
            )
            if p.figure is None:
                lines += [f"{head}; not explained: {p.error}", ""]
                continue
            check = f", residual {p.residual:.1e}" if p.residual is not None else ""
            lines += [
                f"{head} ({p.method}{check}); regions: {_shares(p.regions1)} | {_shares(p.regions2)}",
                "",
                f"   ![{p.kind} {k}]({p.figure})",
                "",
            ]
    return lines


__all__ = ["EXPLAIN_DIR", "ExplainPage", "ExplainedPair", "explain_errors", "explain_markdown", "hardest_pairs"]
