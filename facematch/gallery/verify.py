"""1:1 against an enrolled identity: "is this person alice?" (kiosk, KYC, login).

One subject is compared, nothing is searched: the probe's embedding is scored against
every template of the identity, the scores are aggregated by the gallery's rule
(:func:`~facematch.gallery.openset.aggregate`: ``max``, ``mean`` or ``topk_mean``), and the
decision is taken at a 1:1 threshold (:func:`~facematch.calibration.verification_threshold`:
the caller's, or the calibration's at a target FMR). Unlike identification the threshold is
not scaled by the gallery's size.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Literal

import numpy as np

from ..calibration import verification_threshold
from ..errors import GalleryError, InvalidArgumentError, NoTemplatesError
from ..quality import PROBE_POLICY, QualityPolicy
from ..types import IdentityVerifyResult, TemplateScore
from .binding import ModelBinding
from .config import Aggregation
from .enrol import MultiFacePolicy, source_label
from .openset import aggregate
from .store import Store, identity_not_found, validate_identity_id


class Verification:
    """The gallery's 1:1 methods (a part of :class:`~facematch.gallery.Gallery`)."""

    # provided by Gallery
    aggregation: Aggregation
    aggregation_top_k: int
    multi_face: MultiFacePolicy
    _closed: bool
    _lock: threading.RLock
    _model: ModelBinding
    _store: Store

    def verification_threshold(
        self, threshold: float | None = None, fmr: float | None = None
    ) -> tuple[float, float | None]:
        """(threshold, target FMR or None) of :meth:`verify`: ``threshold``, else the calibration's at ``fmr``.

        The calibration is the one given to the gallery, else the bound embedder card's; with
        neither given the calibration's default FMR is the target.
        """
        return verification_threshold(threshold, fmr, self._model.calibration, model_id=self._model.model_id)

    def verify(
        self,
        identity_id: str,
        image: Any,
        *,
        threshold: float | None = None,
        fmr: float | None = None,
        aligned: bool = False,
        quality: QualityPolicy | None = PROBE_POLICY,
    ) -> IdentityVerifyResult:
        """Is the face in ``image`` the enrolled identity ``identity_id``?

        The probe is the image's largest face (``multi_face="reject"`` refuses several), prepared
        and embedded by the gallery's matcher; its quality is in the result. A probe below the
        ``quality`` policy (default: the lenient ``PROBE_POLICY``, as the server's ``/verify``;
        ``None``: no gate) raises ``LowQualityError`` naming each failing component
        (``details["reasons"]``). Raises ``IdentityNotFoundError`` for an unknown id (before
        any image work) and ``NoTemplatesError`` when the identity has no template.
        """
        identity_id = self._verifiable(identity_id)
        if self._store.identity_key(identity_id) is None:
            raise identity_not_found(identity_id)  # before any image work
        self.verification_threshold(threshold, fmr)  # refuse bad options before any work too
        matcher = self._model.matcher()
        policy: Literal["largest", "reject"] = "reject" if self.multi_face == "reject" else "largest"
        prep = matcher.prepare(image, policy, aligned=aligned)
        emb, norms = matcher.embed_crops(prep.crops[:1])
        probe_quality = matcher.assess(prep, norms)[0] if matcher.quality or quality is not None else None
        if quality is not None and probe_quality is not None:
            quality.require(probe_quality, source_label(image))
        result = self.verify_embedding(identity_id, emb[0], matcher.model_id, threshold=threshold, fmr=fmr)
        return replace(result, face=prep.face(0), quality=probe_quality)

    def verify_embedding(
        self,
        identity_id: str,
        embedding: Any,
        model_id: str | None = None,
        *,
        threshold: float | None = None,
        fmr: float | None = None,
    ) -> IdentityVerifyResult:
        """:meth:`verify` for a probe embedding ``(dim,)`` of the gallery's model (``model_id`` is checked)."""
        identity_id = self._verifiable(identity_id)
        thr, target = self.verification_threshold(threshold, fmr)
        with self._lock:
            key = self._store.identity_key(identity_id)
            if key is None:
                raise identity_not_found(identity_id)
            q = self._model.check_embeddings(embedding, model_id)
            if q.shape[0] != 1:
                raise InvalidArgumentError(f"verify takes one probe embedding, got {q.shape[0]}")
            dim = self._model.dim
            assert dim is not None
            tids, owners, vectors = self._store.embeddings_of_identities([key], dim)
            names = self._store.identities_by_key([key])
        if tids.size == 0:
            raise NoTemplatesError(
                f"identity {identity_id!r} has no templates to compare with; add templates to it first",
                identity_id=identity_id,
            )
        scores = np.clip(vectors @ q[0], -1.0, 1.0).astype(np.float64)
        _, agg, _ = aggregate(owners, scores, tids, self.aggregation, self.aggregation_top_k)
        order = np.lexsort((tids, -scores))  # best first, ties by template id
        similarity = float(agg[0])
        return IdentityVerifyResult(
            identity_id=identity_id,
            is_match=similarity >= thr,
            similarity=similarity,
            threshold=thr,
            templates=tuple(TemplateScore(int(tids[i]), float(scores[i])) for i in order),
            aggregation=self.aggregation,
            model_id=self._model.model_id or "",
            target_fmr=target,
            metadata=names[key][1] if key in names else {},
        )

    def _verifiable(self, identity_id: str) -> str:
        if self._closed:
            raise GalleryError("the gallery is closed")
        return validate_identity_id(identity_id)


__all__ = ["Verification"]
