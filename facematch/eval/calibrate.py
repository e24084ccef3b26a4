"""Calibrate a model's thresholds on a labelled set and write them into its card.

Genuine and impostor scores come from every pair of an identity-folder set; the
card's :class:`~facematch.calibration.Calibration` keeps the thresholds for target FMRs and
the impostor curve (similarity → FMR) that verification and the gallery's open-set
decisions use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import Calibration, fmr_key, threshold_at_fmr
from ..cards import ModelCard, write_card
from ..errors import InvalidArgumentError, ModelError
from ..model_files import load_card, packaged_cards_dir, resolve_model_path
from ..paths import MODEL_DIR_ENV, user_cards_dir
from . import metrics as M
from .data import list_identity_dir
from .embed import ImageFailure
from .runner import embed_identity_set

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationRun:
    """A measured calibration and what it was measured on."""

    calibration: Calibration
    n_images: int
    n_identities: int
    failures: list[ImageFailure]
    genuine: np.ndarray
    impostor: np.ndarray


def measure_calibration(
    matcher: Any,
    root: Path,
    *,
    set_name: str,
    command: str,
    target_fmrs: Sequence[float] = (1e-2, 1e-3, 1e-4),
    default_fmr: float = 1e-3,
    detect: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> CalibrationRun:
    """Score every pair of ``root`` (one folder per identity) and build the calibration."""
    if default_fmr not in target_fmrs:
        target_fmrs = (*target_fmrs, default_fmr)
    ids = list_identity_dir(root)
    emb, x, y = embed_identity_set(matcher, ids, detect=detect, cache_dir=cache_dir, progress=progress)
    scores = M.all_pair_scores(x, y)
    if scores.impostor.size == 0:
        raise InvalidArgumentError(f"{root} gives no impostor pairs")
    if np.isnan(threshold_at_fmr(scores.impostor, default_fmr)):
        raise InvalidArgumentError(
            f"default FMR {default_fmr:g} is finer than 1/{scores.impostor.size} impostor pairs on {root}"
        )
    cal = Calibration.from_scores(
        scores.genuine,
        scores.impostor,
        set_name=set_name,
        command=command,
        target_fmrs=sorted(set(target_fmrs), reverse=True),
        default_fmr=default_fmr,
    )
    skipped = [f for f in target_fmrs if fmr_key(f) not in cal.thresholds]
    if skipped:
        logger.warning(
            "FMRs %s are finer than 1/%d impostor pairs: no threshold written for them", skipped, scores.impostor.size
        )
    return CalibrationRun(cal, len(ids.paths), len(ids.identities), emb.failures, scores.genuine, scores.impostor)


def card_destination(card: ModelCard, *, in_place: bool = False) -> Path:
    """Where ``calibrate --write`` stores the calibrated card.

    ``in_place``: the card JSON it was loaded from (for an ONNX model with an embedded card,
    the sidecar ``<stem>.card.json``, which takes precedence over the embedded one).

    Otherwise the installed checkout is left alone: a card found by id among the packaged
    cards goes to the user's cards folder (:func:`~facematch.paths.user_cards_dir`,
    ``$FACEMATCH_MODEL_DIR`` or ``~/.config/facematch/models``), which card lookup searches
    first; a card that already lives there, or in a ``$FACEMATCH_MODEL_DIR`` folder, is
    updated where it is; a card named by its path needs ``in_place`` or an explicit ``--out``.
    """
    if card.card_path is None:
        raise ModelError(f"card {card.id!r} was not loaded from a file; give --out to say where to write it")
    path = Path(card.card_path)
    if path.suffix != ".json":
        raise ModelError(f"card {card.id!r} came from {path}, not a JSON card; give --out to say where to write it")
    if in_place:
        return path
    here = path.resolve().parent
    users = [user_cards_dir(), *(Path(d) for d in os.environ.get(MODEL_DIR_ENV, "").split(os.pathsep) if d)]
    if any(here == d.expanduser().resolve() for d in users):
        return path
    if here == packaged_cards_dir().resolve():
        return user_cards_dir() / f"{card.id}.json"
    raise InvalidArgumentError(
        f"card {card.id!r} was loaded from {path}: pass --in-place to update it there, or --out PATH"
    )


def write_calibration(
    card: ModelCard, calibration: Calibration, out: Path | None = None, *, in_place: bool = False
) -> Path:
    """Write ``card`` with ``calibration`` to ``out`` (default: :func:`card_destination`) and check it reloads.

    For an ONNX model with its card in ``metadata_props`` the calibrated card goes to the
    sidecar ``<stem>.card.json``, which takes precedence when the model is loaded: rewriting
    the ONNX file would change the sha256 its card records.
    """
    path = write_card_field(card, "calibration", calibration, out, in_place=in_place)
    logger.info("wrote calibration on %r into %s", calibration.set, path)
    return path


def write_card_field(
    card: ModelCard, name: str, value: Any, out: Path | None = None, *, in_place: bool = False
) -> Path:
    """Write ``card`` with its block ``name`` set to ``value`` to ``out`` (default: :func:`card_destination`).

    The written card must still find the card's model file (a card copied to the user's folder
    finds the default pack's file through its ``source``), or nothing is written; it is read back
    and must hold the same block, or ``ModelError``.
    """
    path = Path(out) if out is not None else card_destination(card, in_place=in_place)
    updated = card.model_copy(update={name: value, "card_path": path.resolve()})
    try:
        model_file = resolve_model_path(card)
    except ModelError:
        model_file = None
    if model_file is not None:
        try:
            found = resolve_model_path(updated)
        except ModelError:
            found = None
        if found is None or found.resolve() != model_file.resolve():
            raise ModelError(
                f"a card at {path} would not find the model file {model_file}; "
                "write it beside the model (--in-place, or --out in the model's folder)"
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_card(updated, path)
    except OSError as exc:
        raise ModelError(f"cannot write the card to {path}: {exc.strerror or exc}; give --out") from exc
    reloaded = load_card(path)
    if getattr(reloaded, name) != value:
        raise ModelError(f"the card written to {path} does not read back with the new {name} block")
    return path


__all__ = ["CalibrationRun", "card_destination", "measure_calibration", "write_calibration", "write_card_field"]
