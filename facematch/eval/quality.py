"""Face quality on evaluation sets: measuring every image, fitting the unified score, the ERC section.

Images go through the evaluation's one preparation (:func:`~.embed.prepare_file`, the SDK's
``prepare``) and :func:`facematch.quality.assess`, with the feature norms the embedding step
already computed (cached or not). Only mirror consistency costs extra embeddings, and only
when asked for.

* :func:`fit_quality` fits the logistic unified score on a folder-per-identity set, evaluates
  it with k-fold cross-validation *by identity* (no identity is ever scored by a model that saw
  it) and returns the :class:`~facematch.cards.QualityBlock` to store in the embedder's card.
* :func:`erc_section` is the error-versus-reject part of ``facematch eval aligned`` and
  ``eval pairs``: the FNMR at the FMR-1e-3 threshold after rejecting 0-30 % of the images,
  for the unified score, each component and random rejection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import fmr_key, thresholds_at_fmr
from ..cards import ModelCard, QualityBlock, QualityHeldOut
from ..errors import FacematchError, InvalidArgumentError
from ..quality import (
    COMPONENT_NAMES,
    FEATURES,
    FaceQuality,
    assess,
    feature_vector,
    goodness,
    landmark_model,
    mirror_crops,
)
from ..quality import mirror_consistency as _mirror_cos
from . import erc as E
from .embed import EmbeddedSet, prepare_file

logger = logging.getLogger(__name__)

# The unified score's default features: those every input has (an aligned crop has no
# detection geometry), that cost nothing beyond the embedding (no mirror, no 106-point model),
# and that each lowered celeb24's held-out FNMR or kept degraded copies apart (docs/quality.md).
DEFAULT_FEATURES = ("log_feature_norm", "log_sharpness", "contrast", "brightness_deviation", "clipped_fraction")
DEFAULT_FOLDS = 5
DEFAULT_L2 = 1.0
ERC_FMR = 1e-3
HELD_OUT_REJECT = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
LABEL = "share of the image's genuine comparisons at or above the FMR {fmr:g} threshold ({threshold:.6f})"


# ---- measuring a set ----------------------------------------------------------------------


def assess_set(
    matcher: Any,
    emb: EmbeddedSet,
    *,
    detect: bool,
    mirror: bool = False,
    pose106: bool = False,
    card: ModelCard | None = None,
    batch_size: int = 64,
) -> list[FaceQuality | None]:
    """The quality of each image of ``emb`` that has an embedding (``None`` for the others).

    The image is prepared again (cheap for aligned crops; the detector runs again for photos)
    and assessed with its embedding's norm; ``mirror`` embeds each mirrored crop (one extra
    embedding per image); ``pose106`` runs the 106-point model on the crops. ``card`` defaults
    to the matcher's embedder card (its quality block gives the unified score).
    """
    card = card if card is not None else matcher.embedder_card
    marks = landmark_model() if pose106 else None
    out: list[FaceQuality | None] = [None] * len(emb.paths)
    todo = [i for i in range(len(emb.paths)) if emb.ok[i]]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        preps = []
        for i in idx:
            try:
                preps.append(prepare_file(matcher, Path(emb.paths[i]).read_bytes(), detect))
            except (OSError, FacematchError) as exc:  # it was embedded a moment ago: the file changed
                raise InvalidArgumentError(f"{emb.paths[i]} can no longer be prepared: {exc}") from exc
        mirrored = None
        if mirror:
            crops = np.concatenate([p.crops[:1] for p in preps])
            flipped, _ = matcher.embed_crops(mirror_crops(crops))
            mirrored = _mirror_cos(emb.vectors[idx], flipped)
        for k, (i, prep) in enumerate(zip(idx, preps, strict=True)):
            one = prep if len(prep) == 1 else _first_face(prep)
            out[i] = assess(
                one,
                [float(emb.norms[i])] if np.isfinite(emb.norms[i]) else None,
                card,
                mirror=None if mirrored is None else [float(mirrored[k])],
                landmarks=marks,
            )[0]
    return out


def _first_face(prep: Any) -> Any:
    from ..types import PreparedImage

    face = prep.face(0)
    faces = prep.faces[:1] if face is not None else prep.faces
    return PreparedImage(faces, prep.crops[:1], prep.faces_total, prep.image_size, prep.aligned)


def component_table(qualities: Sequence[FaceQuality | None]) -> dict[str, np.ndarray]:
    """Each component measured for every given face, as an array (components missing anywhere are left out)."""
    faces = [q for q in qualities if q is not None]
    table: dict[str, np.ndarray] = {}
    for name in COMPONENT_NAMES:
        values = [q.components[name] for q in faces]
        if faces and all(v is not None for v in values):
            table[name] = np.asarray(values, np.float64)
    return table


def feature_matrix(names: Sequence[str], qualities: Sequence[FaceQuality]) -> np.ndarray:
    """(N, F) features ``names`` of each face; ``InvalidArgumentError`` naming components that were not measured."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise InvalidArgumentError(f"unknown quality features {unknown}; known: {', '.join(FEATURES)}")
    rows = []
    for q in qualities:
        x, missing = feature_vector(names, q.components)
        if x is None:
            raise InvalidArgumentError(
                f"features {list(names)} need components that were not measured: {', '.join(missing)} "
                "(mirror consistency needs --mirror, pose on aligned crops --pose106, geometry --detect)"
            )
        rows.append(x)
    return np.stack(rows) if rows else np.zeros((0, len(names)))


# ---- the label's threshold --------------------------------------------------------------------


def erc_threshold(card: ModelCard, impostor: np.ndarray | None, fmr: float = ERC_FMR) -> tuple[float, str]:
    """The fixed threshold at ``fmr``: this set's own when its impostors resolve it, else the card's."""
    if impostor is not None and impostor.size * fmr >= 1.0:
        thr = float(thresholds_at_fmr(impostor, [fmr])[0])
        if np.isfinite(thr):
            return thr, f"this set's FMR {fmr:g} threshold ({impostor.size:,} impostor pairs)"
    cal = card.calibration
    if cal is not None and fmr_key(fmr) in cal.thresholds:
        return float(cal.thresholds[fmr_key(fmr)]), f"the card's FMR {fmr:g} threshold (calibrated on {cal.set!r})"
    n = 0 if impostor is None else impostor.size
    raise InvalidArgumentError(
        f"no FMR {fmr:g} threshold: {n} impostor pairs cannot resolve it and the card has no calibration at it"
    )


# ---- fitting the unified score -------------------------------------------------------------------


@dataclass(frozen=True)
class QualityFit:
    """A fitted unified quality score, its held-out evaluation, and what it was fitted on."""

    block: QualityBlock
    n_images: int
    n_failed: int
    oof_erc: dict[str, list[float]]  # held-out ERCs on DEFAULT reject grid: unified, random, each feature's component


def fit_quality(
    matcher: Any,
    emb: EmbeddedSet,
    labels: np.ndarray,
    impostor: np.ndarray | None,
    *,
    set_name: str,
    command: str,
    features: Sequence[str] = DEFAULT_FEATURES,
    detect: bool = False,
    mirror: bool = False,
    pose106: bool = False,
    fmr: float = ERC_FMR,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    l2: float = DEFAULT_L2,
    qualities: Sequence[FaceQuality | None] | None = None,
) -> QualityFit:
    """Fit the logistic unified score on an embedded identity set and evaluate it by identity k-fold.

    ``labels`` are the identity of each image of ``emb``; ``impostor`` the set's impostor scores
    (for its own FMR threshold; the card's calibrated one is used when they cannot resolve it).
    Each image's label is the share of its genuine comparisons that succeed at that threshold,
    weighted by their number. The held-out result pools the out-of-fold scores of ``folds``
    folds of identities; the stored model is then fitted on every image. ``qualities`` (one per
    image of ``emb``) skips measuring them again.
    """
    features = tuple(features)
    card = matcher.embedder_card
    ok = np.flatnonzero(emb.ok)
    if qualities is None:
        qualities = assess_set(matcher, emb, detect=detect, mirror=mirror, pose106=pose106, card=card)
    faces = [q for q in (qualities[int(i)] for i in ok) if q is not None]
    x = feature_matrix(features, faces)
    y = np.asarray(labels)[ok]
    thr, source = erc_threshold(card, impostor, fmr)
    pairs = E.GenuinePairs.of(emb.vectors[ok], y)
    if len(pairs) == 0:
        raise InvalidArgumentError("the set gives no genuine comparisons: nothing to fit a quality score on")
    target, weight = E.image_success(pairs, thr)
    fold = E.identity_folds(y, folds, seed)
    logits = E.out_of_fold_logits(x, target, weight, fold, l2)
    reject = E.DEFAULT_REJECT
    curves = {
        "unified": E.erc(logits, pairs, thr, reject, fold),
        "random": E.erc_random(pairs, thr, reject, seed=seed, groups=fold),
    }
    for name, column in component_table(faces).items():
        curves[name] = E.erc(goodness(name, column), pairs, thr, reject, fold)
    mean, std = E.standardise(x)
    weights, bias = E.fit_logistic((x - mean) / std, target, weight, l2)
    grid = [reject.index(r) for r in HELD_OUT_REJECT]
    held = QualityHeldOut(
        reject=HELD_OUT_REJECT,
        fnmr=tuple(round(float(curves["unified"][k]), 6) for k in grid),
        fnmr_random=tuple(round(float(curves["random"][k]), 6) for k in grid),
        fnmr_feature_norm=tuple(round(float(curves["feature_norm"][k]), 6) for k in grid)
        if "feature_norm" in curves
        else None,
        n_genuine_pairs=len(pairs),
    )
    block = QualityBlock(
        features=features,
        mean=tuple(round(float(v), 6) for v in mean),
        std=tuple(round(float(v), 6) for v in std),
        weights=tuple(round(float(v), 6) for v in weights),
        bias=round(bias, 6),
        label=LABEL.format(fmr=fmr, threshold=thr) + f"; threshold: {source}",
        fmr=fmr,
        threshold=round(thr, 6),
        set=set_name,
        command=command,
        fold_scheme=f"{folds}-fold by identity (seed {seed}): each identity's images scored by the model fitted "
        "without them, the share rejected within each fold; held_out pools their errors",
        l2=l2,
        n_images=int(ok.size),
        n_identities=int(np.unique(y).size),
        held_out=held,
    )
    logger.info("fitted quality model on %r: %s", set_name, dict(zip(features, block.weights, strict=True)))
    return QualityFit(
        block=block,
        n_images=int(ok.size),
        n_failed=int((~emb.ok).sum()),
        oof_erc={k: [float(v) for v in c] for k, c in curves.items()},
    )


def write_quality(card: ModelCard, block: QualityBlock, out: Path) -> Path:
    """Write ``card`` with the quality ``block`` to ``out`` and check that it reads back."""
    from .calibrate import write_card_field

    return write_card_field(card, "quality", block, out)


# ---- the ERC section of an evaluation ---------------------------------------------------------------


@dataclass(frozen=True)
class ErcCurve:
    """The ERC of one quality measure: FNMR after each rejected share, its area and FNMR cuts."""

    measure: str
    fnmr: list[float | None]
    area: float | None
    cut_10: float | None  # 1 - FNMR(10 %) / FNMR(0)
    cut_20: float | None
    note: str = ""


@dataclass(frozen=True)
class ErcSection:
    """Error versus reject: FNMR at a fixed FMR threshold as the lowest-quality images are rejected."""

    fmr: float
    threshold: float
    threshold_source: str
    reject: list[float]
    n_images: int
    n_genuine_pairs: int
    fnmr_at_0: float
    curves: list[ErcCurve]
    mirror: bool
    pose106: bool
    unified_note: str
    rejection: str = "the lowest-quality share of all images"  # or: within each fold of identities
    files: dict[str, str] = field(default_factory=dict)

    def curve(self, measure: str) -> ErcCurve | None:
        return next((c for c in self.curves if c.measure == measure), None)


def _curve(measure: str, fnmr: np.ndarray, reject: Sequence[float], note: str = "") -> ErcCurve:
    def fin(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return ErcCurve(
        measure=measure,
        fnmr=[fin(v) for v in fnmr],
        area=fin(E.area(reject, fnmr)),
        cut_10=fin(E.fnmr_cut(fnmr, reject, 0.1)),
        cut_20=fin(E.fnmr_cut(fnmr, reject, 0.2)),
        note=note,
    )


def erc_section(
    card: ModelCard,
    qualities: Sequence[FaceQuality],
    pairs: E.GenuinePairs,
    impostor: np.ndarray | None,
    *,
    labels: np.ndarray | None,
    set_name: str,
    mirror: bool,
    pose106: bool,
    fmr: float = ERC_FMR,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    reject: Sequence[float] = E.DEFAULT_REJECT,
) -> ErcSection:
    """The ERC of the unified score, of every measured component and of random rejection.

    ``qualities`` has one entry per image the ``pairs`` index. When the card's quality model
    was fitted on this very set (same name) and ``labels`` are known, the unified curve is the
    identity k-fold refit (held out, as the fit reports it) and the card's own model is shown
    beside it as in-sample.
    """
    if len(qualities) != pairs.n_images:
        raise InvalidArgumentError(f"one quality per image needed ({pairs.n_images}), got {len(qualities)}")
    if len(pairs) == 0:
        raise InvalidArgumentError("no genuine comparisons: no error-versus-reject curve")
    thr, source = erc_threshold(card, impostor, fmr)
    curves: list[ErcCurve] = []
    block = card.quality
    groups = None
    rejection = "the lowest-quality share of all images"
    note = ""
    if block is None:
        note = f"model {card.id!r} has no quality block: no unified score (fit one with `facematch quality-fit`)"
    else:
        scores = np.array([np.nan if q.unified is None else q.unified for q in qualities])
        in_sample = block.set == set_name
        if in_sample and labels is not None and np.unique(labels).size >= folds:
            # The card's model saw these images: score each fold of identities with a model fitted
            # without it, and reject within each fold (its scores come from its own model).
            groups = E.identity_folds(labels, folds, seed)
            rejection = f"the lowest-quality share within each of {folds} folds of identities"
            x = feature_matrix(block.features, qualities)
            target, weight = E.image_success(pairs, thr)
            logits = E.out_of_fold_logits(x, target, weight, groups, block.l2)
            curves.append(
                _curve("unified", E.erc(logits, pairs, thr, reject, groups), reject, f"{folds}-fold by identity refit")
            )
            note = (
                f"the card's quality model was fitted on {block.set!r}, so 'unified' is its {folds}-fold by identity "
                "refit here (every image scored by a model that never saw its identity); 'unified (card)' is the "
                "card's own model, in-sample"
            )
            if np.all(np.isfinite(scores)):
                curves.append(_curve("unified (card)", E.erc(scores, pairs, thr, reject, groups), reject, "in-sample"))
        elif np.all(np.isfinite(scores)):
            fitted = f"card model (fitted on {block.set!r})"
            curves.append(_curve("unified", E.erc(scores, pairs, thr, reject), reject, fitted))
            note = f"the card's quality model, fitted on {block.set!r}"
        else:
            missing = sorted({m for q in qualities for m in q.missing})
            note = f"no unified score for every image (missing components: {', '.join(missing) or 'none'})"
    for name, column in component_table(qualities).items():
        curves.append(_curve(name, E.erc(goodness(name, column), pairs, thr, reject, groups), reject))
    random = E.erc_random(pairs, thr, reject, seed=seed, groups=groups)
    curves.append(_curve("random", random, reject, "mean of 50 seeded draws"))
    base = E.erc(np.zeros(pairs.n_images), pairs, thr, [0.0])[0]
    return ErcSection(
        fmr=fmr,
        threshold=thr,
        threshold_source=source,
        reject=[float(r) for r in reject],
        n_images=pairs.n_images,
        n_genuine_pairs=len(pairs),
        fnmr_at_0=float(base),
        curves=curves,
        mirror=mirror,
        pose106=pose106,
        unified_note=note,
        rejection=rejection,
    )


__all__ = [
    "DEFAULT_FEATURES",
    "ErcCurve",
    "ErcSection",
    "QualityFit",
    "assess_set",
    "component_table",
    "erc_section",
    "erc_threshold",
    "feature_matrix",
    "fit_quality",
    "write_quality",
]
