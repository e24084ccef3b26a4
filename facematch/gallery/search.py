"""Identification search: index shortlist, exact re-rank, per-identity aggregation, results.

A probe is searched in the derived index for enough templates to cover ``k`` identities
(widened when one identity dominates the shortlist) and aggregated per identity
(:func:`~facematch.gallery.openset.aggregate`: ``max``, ``mean``, ``topk_mean``). With
``rerank`` (when the index's scores are approximate), and always for ``mean`` /
``topk_mean``, every template of the shortlisted identities is scored exactly against
the store's fp32 embeddings, and more identities are taken until none left out could
reach the top ``k``. Results become :class:`IdentifyResult` / :class:`Candidate` with
the open-set decision.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np

from ..calibration import Calibration, threshold_or_rate
from ..errors import CalibrationMissingError, FacematchError, GalleryError, InvalidArgumentError
from ..quality.policy import PROBE_POLICY, QualityPolicy
from ..types import Candidate, IdentifyResult
from .binding import ModelBinding
from .config import AGGREGATIONS, Aggregation
from .enrol import MultiFacePolicy, as_image_list, source_label
from .index import VectorIndex
from .openset import aggregate, needs_extrapolation, threshold_for_fpir
from .store import Store
from .sync import IndexSync

MAX_K = 1000

Ranked = list[tuple[int, float, int]]  # (identity key, similarity, best template id), best first


def search(
    sync: IndexSync, q: np.ndarray, k: int, method: Aggregation, *, n_identities: int, top_k: int
) -> list[Ranked]:
    """Per probe row of ``q``: up to ``k`` (identity key, aggregated similarity, best template id), ranked."""
    index, owners_map, config = sync.index, sync.owners, sync.config
    n_templates = len(owners_map)
    if index is None or n_templates == 0:
        return [[] for _ in range(q.shape[0])]
    rerank = config.rerank and not getattr(index, "exhaustive", False)
    exact = rerank or method != "max"
    per_identity = max(1.0, n_templates / max(n_identities, 1))
    want = max(2 * k, 10) if exact else k  # identities in the shortlist
    fetch = min(n_templates, math.ceil(want * per_identity * 2) + 16)
    if rerank:  # approximate scores: re-score rerank_factor x the identities, from as many more templates
        factor = config.rerank_factor_for(n_templates)
        want *= factor
        fetch = min(n_templates, fetch * factor)
    scores, tids = index.search(q, fetch)
    ranker = _Ranker(sync, index, k, method, top_k, n_templates, exact)
    listed = [ranker.shortlist(scores[r], tids[r]) for r in range(q.shape[0])]
    if exact:  # one store read for the first shortlists of the whole batch
        ranker.load(np.concatenate([first[0][:want] for first in listed]))
    return [ranker.rank(q[r], listed[r], fetch, want) for r in range(q.shape[0])]


class _Ranker:
    """One probe's ranking: widen the shortlist until it holds what the aggregation needs.

    Without re-rank, ``max`` takes the index's scores: the shortlist holds ``k`` identities
    (widened when one identity dominates it). With re-rank, and always for ``mean`` /
    ``topk_mean``, every template of the shortlisted identities is scored exactly from
    the store's fp32 embeddings (so an identity the index found by any one template gets
    its exact score), and the shortlist is widened until the ``k``-th aggregated score is
    at least the best score any identity left out can reach: an aggregate never exceeds the
    identity's best template, and a left-out identity's best template scores at most the
    first identity cut from the shortlist, or the last template fetched. With an exact
    index the answer therefore equals a brute-force aggregation over every template.
    """

    def __init__(
        self,
        sync: IndexSync,
        index: VectorIndex,
        k: int,
        method: Aggregation,
        top_k: int,
        n_templates: int,
        exact: bool,
    ) -> None:
        self.sync, self.index, self.k, self.method, self.top_k = sync, index, k, method, top_k
        self.n_templates, self.exact = n_templates, exact
        self._loaded: set[int] = set()  # identities whose templates have been read
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (template ids, owners, fp32) per read
        self._rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the parts concatenated

    def shortlist(self, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Identities by their best template in the index: (identities, scores, best template, last score)."""
        valid = t >= 0
        s_v, t_v = s[valid], t[valid]
        owners = self.sync.owners.lookup(t_v)
        known = owners >= 0
        floor = float(s_v[-1]) if s_v.size else -math.inf  # the index's last score fetched
        ident, agg, best = aggregate(owners[known], s_v[known], t_v[known], "max")
        return ident, agg, best, floor

    def rank(
        self, probe: np.ndarray, listed: tuple[np.ndarray, np.ndarray, np.ndarray, float], fetch: int, want: int
    ) -> Ranked:
        """``listed``: :meth:`shortlist` of the index's first answer for ``probe`` (``fetch`` templates)."""
        k = self.k
        while True:
            ident, agg, best, floor = listed
            complete = fetch >= self.n_templates
            if ident.size >= want or complete:
                if not self.exact:
                    return _rows(ident[:k], agg[:k], best[:k])
                cut = ident.size > want
                left_out = max(float(agg[want]) if cut else -math.inf, -math.inf if complete else floor)
                a_ident, a_agg, a_best = self.score(probe, ident[:want])
                kth = float(a_agg[k - 1]) if a_agg.size >= k else -math.inf
                if kth >= left_out:
                    return _rows(a_ident[:k], a_agg[:k], a_best[:k])
                want *= 2  # an identity left out could still reach the top k: take more of them
                if ident.size >= want or complete:
                    continue
            fetch = min(self.n_templates, fetch * 4)  # too few identities in the shortlist: widen it
            s2, t2 = self.index.search(probe[None, :], fetch)
            listed = self.shortlist(s2[0], t2[0])

    def score(self, probe: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact aggregation over every template of ``identities``."""
        self.load(identities)
        tids, owners, vecs = self._loaded_rows()
        if len(self._loaded) > identities.size:  # rows of other identities were read too (a batch, a widening)
            pick = np.flatnonzero(np.isin(owners, identities))
            tids, owners, vecs = tids[pick], owners[pick], vecs[pick]
        return aggregate(owners, vecs @ probe, tids, self.method, self.top_k)

    def load(self, identities: np.ndarray) -> None:
        """Read the templates of the ``identities`` not read yet from the store (one query)."""
        missing = sorted(set(np.asarray(identities, np.int64).tolist()) - self._loaded)
        if not missing:
            return
        assert self.sync.dim is not None
        self._parts.append(self.sync.store.embeddings_of_identities(missing, self.sync.dim))
        self._loaded.update(missing)
        self._rows = None

    def _loaded_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._rows is None:
            parts = self._parts
            if len(parts) == 1:
                self._rows = parts[0]
            else:
                dim = self.sync.dim or 0
                self._rows = (
                    np.concatenate([p[0] for p in parts]) if parts else np.zeros((0,), np.int64),
                    np.concatenate([p[1] for p in parts]) if parts else np.zeros((0,), np.int64),
                    np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, dim), np.float32),
                )
                self._parts = [self._rows]
        return self._rows


def _rows(ident: np.ndarray, agg: np.ndarray, best: np.ndarray) -> Ranked:
    return [(int(i), float(a), int(b)) for i, a, b in zip(ident, agg, best, strict=True)]


def build_results(
    ranked: list[Ranked],
    names: dict[int, tuple[str, dict[str, object]]],
    *,
    threshold: float,
    target_fpir: float | None,
    calibration: Calibration | None,
    extrapolated: bool,
    gallery_size: int,
    comparisons: int = 0,
) -> list[IdentifyResult]:
    """One :class:`IdentifyResult` per probe: candidates (named through ``names``) and the open-set decision.

    Identities deleted since the search (absent from ``names``) are dropped; each candidate's
    ``estimated_fmr`` is the calibration's false-match rate at its similarity, or, finer than
    the calibration resolves, that resolution as a bound (``estimated_fmr_below_resolution``).
    ``comparisons`` is the template count the FPIR threshold was scaled by.
    """
    resolution = calibration.min_fmr if calibration is not None else None
    out = []
    for rows in ranked:
        cands = tuple(
            Candidate(
                identity_id=names[r][0],
                similarity=float(s),
                estimated_fmr=fmr,
                template_id=int(t),
                metadata=names[r][1],
                estimated_fmr_below_resolution=below,
            )
            for (r, s, t), (fmr, below) in zip(rows, estimated_fmrs(calibration, [s for _, s, _ in rows]), strict=True)
            if r in names
        )
        out.append(
            IdentifyResult(
                candidates=cands,
                threshold=threshold,
                is_unknown=not cands or cands[0].similarity < threshold,
                target_fpir=target_fpir,
                gallery_size=gallery_size,
                threshold_extrapolated=extrapolated,
                comparisons=comparisons,
                fmr_resolution=resolution,
            )
        )
    return out


def estimated_fmrs(calibration: Calibration | None, similarities: Sequence[float]) -> list[tuple[float | None, bool]]:
    """Per similarity: (estimated per-comparison FMR, below the calibration's resolution?).

    Below the resolution (``1 / impostor pairs``, i.e. above every calibration impostor score)
    the estimate would be an extrapolation: the resolution is returned as its upper bound.
    """
    if calibration is None or not len(similarities):
        return [(None, False)] * len(similarities)
    fmrs = np.atleast_1d(calibration.fmr_at(np.asarray(similarities, np.float64)))
    floor = calibration.min_fmr
    return [(floor, True) if f < floor else (float(f), False) for f in fmrs]


class Identification:
    """The gallery's identification methods (a part of :class:`~facematch.gallery.Gallery`).

    Images are prepared with the matcher's shared step (``prepare``, policy ``largest``, or
    ``reject`` under ``multi_face="reject"``) and embedded in one ``embed_crops`` call;
    probes are searched (:func:`search`) and decided (:func:`build_results`) here.
    """

    # provided by Gallery
    aggregation: Aggregation
    aggregation_top_k: int
    default_fpir: float
    multi_face: MultiFacePolicy
    _closed: bool
    _lock: threading.RLock
    _model: ModelBinding
    _n_identities: int
    _store: Store
    _sync: IndexSync

    def resolve_threshold(
        self, threshold: float | None = None, fpir: float | None = None
    ) -> tuple[float, float | None]:
        """(threshold, target FPIR or None) for the current gallery size.

        With neither given, the gallery's ``default_fpir`` is used; FPIR needs a calibration
        (the embedder card's, or the one given to the gallery) or raises ``CalibrationMissingError``.
        """
        thr, rate = threshold_or_rate(threshold, fpir, "fpir")
        if thr is not None:
            return thr, None
        target = self.default_fpir if rate is None else rate
        cal = self._model.calibration
        if cal is None:
            raise CalibrationMissingError(
                f"model {self._model.model_id!r} has no impostor calibration for an FPIR threshold; "
                "give a threshold, or calibrate the model card (facematch calibrate)"
            )
        return threshold_for_fpir(cal, target, self._fpir_comparisons()), target

    def _fpir_comparisons(self) -> int:
        """How many comparisons an identification makes, for FPIR → FMR: the template count."""
        return max(len(self._sync.owners), 1)

    def identify(
        self,
        image: Any,
        *,
        k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        aligned: bool = False,
        quality: QualityPolicy | None = PROBE_POLICY,
    ) -> IdentifyResult:
        """Identify the face in an image (the largest one; ``multi_face="reject"`` refuses several).

        A probe below the ``quality`` policy (default: the lenient ``PROBE_POLICY``, as the
        server's ``/identify``; ``None``: no gate) raises ``LowQualityError`` naming each failing
        component (``details["reasons"]``).
        """
        return self.identify_batch([image], k=k, threshold=threshold, fpir=fpir, aligned=aligned, quality=quality)[0]

    def identify_batch(
        self,
        images: Sequence[Any],
        *,
        k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        aligned: bool = False,
        quality: QualityPolicy | None = PROBE_POLICY,
    ) -> list[IdentifyResult]:
        """Identify many images with one embedding call and one index search.

        All images are prepared and checked against ``quality`` before the search: the first
        one without a usable face raises its error (``NoFaceError``, ``InvalidImageError``,
        ``LowQualityError``, ...) naming it, with ``details["index"]`` and ``details["source"]``.
        """
        items = as_image_list(images)
        if not items:
            return []
        matcher = self._model.matcher()
        policy: Literal["largest", "reject"] = "reject" if self.multi_face == "reject" else "largest"
        prepared = []
        for i, img in enumerate(items):
            try:
                prepared.append(matcher.prepare(img, policy, aligned=aligned))
            except FacematchError as exc:
                source = source_label(img, i)
                raise exc.about(source, index=i, source=source) from exc
        embeddings, norms = matcher.embed_crops(np.concatenate([p.crops[:1] for p in prepared]))
        assess = matcher.quality or quality is not None
        qualities = [matcher.assess(p, norms[i : i + 1])[0] if assess else None for i, p in enumerate(prepared)]
        if quality is not None:
            for i, (img, q) in enumerate(zip(items, qualities, strict=True)):
                if q is not None:
                    source = source_label(img, i)
                    try:
                        quality.require(q, source)
                    except FacematchError as exc:
                        raise exc.about(source, index=i, source=source) from exc
        results = self.identify_embeddings(embeddings, matcher.model_id, k=k, threshold=threshold, fpir=fpir)
        return [replace(r, face=p.face(0), quality=q) for r, p, q in zip(results, prepared, qualities, strict=True)]

    def identify_embeddings(
        self,
        embeddings: Any,
        model_id: str | None = None,
        *,
        k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        aggregation: Aggregation | None = None,
    ) -> list[IdentifyResult]:
        """Open-set identification of probe embeddings ``(q, dim)``: one result per probe."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidArgumentError(f"k must be an integer in [1, {MAX_K}]")
        method = aggregation or self.aggregation
        if method not in AGGREGATIONS:
            raise InvalidArgumentError(f"aggregation must be one of {AGGREGATIONS}")
        if self._closed:
            raise GalleryError("the gallery is closed")
        with self._lock:
            if self._model.model_id is None:
                if embeddings is None or np.asarray(embeddings).size == 0:
                    raise InvalidArgumentError("no probe embeddings given")
                thr, target = self.resolve_threshold(threshold, fpir)
                n_probes = 1 if np.asarray(embeddings).ndim == 1 else len(embeddings)
                cal = self._model.calibration
                empty = IdentifyResult(
                    (),
                    thr,
                    True,
                    target_fpir=target,
                    gallery_size=0,
                    comparisons=self._fpir_comparisons(),
                    fmr_resolution=cal.min_fmr if cal is not None else None,
                )
                return [empty] * n_probes
            q = self._model.check_embeddings(embeddings, model_id)
            thr, target = self.resolve_threshold(threshold, fpir)
            n_templates = self._fpir_comparisons()
            ranked = search(self._sync, q, k, method, n_identities=self._n_identities, top_k=self.aggregation_top_k)
            names = self._store.identities_by_key([r for rows in ranked for r, _, _ in rows])
            gallery_size = self._n_identities
        cal = self._model.calibration
        return build_results(
            ranked,
            names,
            threshold=thr,
            target_fpir=target,
            calibration=cal,
            extrapolated=target is not None and cal is not None and needs_extrapolation(cal, target, n_templates),
            gallery_size=gallery_size,
            comparisons=n_templates,
        )


__all__ = ["MAX_K", "Identification", "Ranked", "build_results", "estimated_fmrs", "search"]
