"""The gallery's model binding: which embedder its templates come from, and that model's calibration.

A gallery is bound to one embedder (card id + dimension, recorded in the store) by its
first enrolment, or up front (``Gallery(model=...)`` / ``matcher=``). Every embedding
that enters afterwards, for enrolment or as a probe, is checked against it here
(:meth:`ModelBinding.check_embeddings`: shape, model, finiteness, unit norm), so a
gallery never mixes two models' vectors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..calibration import Calibration
from ..cards import ModelCard
from ..errors import FacematchError, InvalidArgumentError, ModelMismatchError
from ..model_files import load_card
from ..similarity import l2_normalize
from .store import Store

if TYPE_CHECKING:
    from ..matcher import FaceMatcher

logger = logging.getLogger(__name__)


class ModelBinding:
    """The model a gallery is bound to, the matcher for its image inputs, and the calibration for FPIR.

    ``on_bound(dim)`` runs when an unbound gallery gets its model (the index can open then).
    A read-only gallery is never bound by this handle.
    """

    def __init__(
        self,
        store: Store,
        *,
        path: Path | str,
        read_only: bool,
        matcher: FaceMatcher | None,
        calibration: Calibration | None,
    ) -> None:
        self._store = store
        self._path = path
        self._read_only = read_only
        self._matcher = matcher
        self._calibration = calibration
        self._card: ModelCard | None = None
        self._card_loaded = False
        self.on_bound: Callable[[int], None] | None = None

    @property
    def model_id(self) -> str | None:
        return self._store.get_meta("model_id")

    @property
    def dim(self) -> int | None:
        raw = self._store.get_meta("dim")
        return None if raw is None else int(raw)

    def bind_requested(self, model: str | os.PathLike[str] | ModelCard | None, matcher: Any) -> None:
        """Bind (or check) the model given to the gallery's constructor."""
        if model is not None:
            card = load_card(model)
            if card.embedding is None:
                raise InvalidArgumentError(f"model {card.id!r} is not an embedding model")
            self.bind(card.id, card.embedding.dim)
            self._card, self._card_loaded = card, True
        if matcher is not None:
            self.bind(matcher.model_id, int(matcher.dim))

    def bind(self, model_id: str, dim: int) -> None:
        """Check ``(model_id, dim)`` against the gallery's model, binding an unbound gallery."""
        bound_id, bound_dim = self.model_id, self.dim
        if bound_id is None:
            if self._read_only:
                return
            if not isinstance(model_id, str) or not model_id or dim < 1:
                raise InvalidArgumentError("a model id and a positive dimension are needed to bind the gallery")
            # first writer wins: another process sharing the store may have bound it meanwhile
            stored = self._store.init_meta({"model_id": model_id, "dim": str(int(dim))})
            bound_id, bound_dim = stored["model_id"], int(stored["dim"])
            if bound_id == model_id and bound_dim == int(dim):
                logger.info("gallery %s bound to model %s (dim %d)", self._path, model_id, dim)
                if self.on_bound is not None:
                    self.on_bound(int(dim))
                return
        if model_id != bound_id or int(dim) != bound_dim:
            raise ModelMismatchError(
                f"gallery {self._path} holds {bound_id!r} embeddings (dim {bound_dim}); got {model_id!r} (dim {dim})",
                gallery_model=bound_id,
                gallery_dim=bound_dim,
                model=model_id,
                dim=int(dim),
            )

    def matcher(self) -> FaceMatcher:
        """The matcher for image inputs (the default one on first use), checked against the binding."""
        if self._matcher is None:
            from ..matcher import default_matcher

            self._matcher = default_matcher()
        self.bind(self._matcher.model_id, int(self._matcher.dim))
        return self._matcher

    @property
    def calibration(self) -> Calibration | None:
        """The calibration given to the gallery, else the bound embedder card's (``None`` without either)."""
        if self._calibration is not None:
            return self._calibration
        card = self._model_card()
        return card.calibration if card is not None else None

    @property
    def card(self) -> ModelCard | None:
        """The bound embedder's card (the matcher's, else loaded by id), ``None`` when unbound or not found."""
        return self._model_card()

    def _model_card(self) -> ModelCard | None:
        if self._matcher is not None and self._matcher.model_id == self.model_id:
            return self._matcher.embedder_card
        if not self._card_loaded and self.model_id is not None:
            self._card_loaded = True
            try:
                card = load_card(self.model_id)
            except FacematchError as exc:
                logger.info("no card for %r (%s); FPIR thresholds need a calibration", self.model_id, exc)
                card = None
            if card is not None and (card.embedding is None or card.embedding.dim != self.dim):
                raise ModelMismatchError(f"card {card.id!r} does not describe {self.dim}-D embeddings")
            self._card = card
        return self._card

    def check_embeddings(self, embeddings: Any, model_id: str | None) -> np.ndarray:
        """Validate an ``(n, dim)`` (or ``(dim,)``) batch against the binding; returns unit-norm float32 rows.

        ``model_id`` defaults to the bound model; an unbound gallery is bound by it.
        Refuses non-finite values and zero vectors.
        """
        try:
            arr = np.asarray(embeddings, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"embeddings must be a numeric array: {exc}") from exc
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InvalidArgumentError(f"embeddings must have shape (n, dim) with n >= 1, got {arr.shape}")
        if model_id is None:
            if self.model_id is None:
                raise InvalidArgumentError("model_id is required: the gallery is not bound to a model yet")
            model_id = self.model_id
        self.bind(model_id, int(arr.shape[1]))
        if not np.all(np.isfinite(arr)):
            raise InvalidArgumentError("embeddings must be finite")
        unit, norms = l2_normalize(arr)
        if np.any(norms < 1e-6):
            raise InvalidArgumentError("embeddings must not be zero vectors")
        return np.ascontiguousarray(unit)


__all__ = ["ModelBinding"]
