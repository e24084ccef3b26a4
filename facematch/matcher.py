"""FaceMatcher: decode → detect → align → embed → compare, on models described by cards."""

from __future__ import annotations

import logging
import numbers
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from .align import norm_crops
from .cards import (
    DEFAULT_DETECTOR,
    DEFAULT_EMBEDDER,
    ModelCard,
    load_card,
    resolve_model_path,
    verify_file,
)
from .errors import InvalidArgumentError, MultipleFacesError, NoFaceError, NotAlignedError
from .io import DEFAULT_MAX_PIXELS, DecodedImage, ImageInput, load_image
from .runtime import THREADS_ENV, create_session
from .types import Detections, Face, FaceEmbedding, VerifyResult
from .zoo.arcface import ArcFaceEmbedder
from .zoo.scrfd import SCRFD

logger = logging.getLogger(__name__)

ModelRef = str | os.PathLike[str] | ModelCard
FacePolicy = Literal["largest", "best", "reject"]
FACE_POLICIES = ("largest", "best", "reject")
ALIGNED_ASPECT_TOLERANCE = 0.05  # an "aligned" crop of another size must keep the template's aspect ratio


def _load_model(
    ref: ModelRef, task: str, providers: Sequence[str] | None, threads: int | None
) -> tuple[ModelCard, Any]:
    card = load_card(ref)
    if card.task != task:
        raise InvalidArgumentError(f"model {card.id!r} is a {card.task} model, expected {task}")
    path = resolve_model_path(card)
    verify_file(card, path)
    session = create_session(
        path, providers=providers, threads=threads, dynamic_batch=task == "embedding" and card.input.dynamic_batch
    )
    logger.info("loaded %s model %s from %s", task, card.id, path)
    return card, session


def scale_face(face: Face, scale: tuple[float, float]) -> Face:
    """A face mapped by per-axis scale factors (decoded pixels → original image coordinates)."""
    if scale == (1.0, 1.0):
        return face
    s = np.array(scale, np.float32)
    return Face(box=face.box * np.tile(s, 2), score=face.score, landmarks=face.landmarks * s)


class FaceMatcher:
    """Detect, align and embed faces, and compare them on the unit hypersphere.

    Args:
        detector: detector card id, card path, model path with card, ``ModelCard``,
            a ready ``SCRFD`` wrapper, or ``None`` for the default pack.
        embedder: the same for the embedding model (``FaceMatcher(embedder="my_r50.onnx")``).
        providers: ONNX Runtime providers in priority order (default TensorRT → CUDA → CPU).
        threads: intra-op threads per session (default: the CPU count divided by ``workers``,
            so concurrent images do not fight over cores; ``FACEMATCH_THREADS`` overrides).
        workers: images one call processes concurrently (``verify`` runs its two images side
            by side: decode, detect, align and embed each in its own thread). Default
            ``min(2, CPU count)``; 1 runs everything in the calling thread.
        det_size: detector input long side; ``None`` picks it from each image.
        det_threshold: detection score threshold (default from the detector card).
        max_pixels: pixel budget per image, checked before decoding.
        face_policy: which face of an image to use: ``largest`` box, ``best`` score, or
            ``reject`` images with more than one face.
        decode_max_side: large JPEGs are decoded at reduced scale keeping at least this
            long side (``None`` decodes at full resolution).
        coarse_det_size: when only the largest face is needed (verify, identify,
            ``embed(faces="largest")``), detect first at this input long side; fall back
            to the full size when nothing is found or the largest face is smaller than
            ``min_coarse_face`` detector-input pixels. ``None`` always uses the full size.
    """

    def __init__(
        self,
        detector: ModelRef | SCRFD | None = None,
        embedder: ModelRef | ArcFaceEmbedder | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        det_size: int | None = None,
        det_threshold: float | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        face_policy: FacePolicy = "largest",
        decode_max_side: int | None = 1280,
        max_batch: int = 32,
        coarse_det_size: int | None = 320,
        min_coarse_face: float = 24.0,
        workers: int | None = None,
    ) -> None:
        cpus = os.cpu_count() or 1
        if workers is None:
            workers = min(2, cpus)
        if workers < 1:
            raise InvalidArgumentError(f"workers must be >= 1, got {workers}")
        if threads is None and not os.environ.get(THREADS_ENV) and workers > 1:
            threads = max(1, cpus // workers)
        if face_policy not in FACE_POLICIES:
            raise InvalidArgumentError(f"face_policy must be one of {FACE_POLICIES}, got {face_policy!r}")
        if det_size is not None and not (32 <= det_size <= 4096):
            raise InvalidArgumentError(f"det_size must be in [32, 4096], got {det_size}")
        if det_threshold is not None and not (0.0 <= det_threshold <= 1.0):
            raise InvalidArgumentError(f"det_threshold must be in [0, 1], got {det_threshold}")
        if isinstance(detector, SCRFD):
            self.detector = detector
        else:
            card, sess = _load_model(detector or DEFAULT_DETECTOR, "detection", providers, threads)
            self.detector = SCRFD(sess, card)
        if isinstance(embedder, ArcFaceEmbedder):
            self.embedder = embedder
        else:
            card, sess = _load_model(embedder or DEFAULT_EMBEDDER, "embedding", providers, threads)
            self.embedder = ArcFaceEmbedder(sess, card, max_batch=max_batch)
        self.det_size = det_size
        self.det_threshold = det_threshold
        self.max_pixels = max_pixels
        self.face_policy: FacePolicy = face_policy
        self.decode_max_side = decode_max_side
        self.coarse_det_size = coarse_det_size
        self.min_coarse_face = min_coarse_face
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ---- model facts ---------------------------------------------------------------------
    @property
    def embedder_card(self) -> ModelCard:
        return self.embedder.card

    @property
    def detector_card(self) -> ModelCard:
        return self.detector.card

    @property
    def model_id(self) -> str:
        return self.embedder.card.id

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def threshold_for(self, far: float | None = None) -> float:
        """Similarity threshold at a target false-match rate, from the embedder card's calibration."""
        return self.embedder_card.threshold_for(far)

    # ---- pipeline steps -------------------------------------------------------------------
    def load(self, image: ImageInput | DecodedImage) -> DecodedImage:
        """Decode an image input under this matcher's limits."""
        return load_image(image, max_pixels=self.max_pixels, max_side=self.decode_max_side)

    def _detect_decoded(self, decoded: DecodedImage) -> Detections:
        return self.detector.detect(decoded.pixels, input_size=self.det_size, score_threshold=self.det_threshold)

    def _largest_face_decoded(self, decoded: DecodedImage) -> Face:
        """The largest face, found coarse-first.

        Large faces are found at a small detector input (SCRFD-500M finds every face of
        an ordinary portrait at 320), so the full-size pass runs only when the coarse
        one finds nothing or its largest face is small, i.e. when small faces matter.
        """
        coarse = self.coarse_det_size
        if coarse is not None and self.det_size is None and max(decoded.width, decoded.height) > coarse:
            dets = self.detector.detect(decoded.pixels, input_size=coarse, score_threshold=self.det_threshold)
            face = dets.largest()
            if face is not None:
                ratio = coarse / max(decoded.width, decoded.height)
                if min(face.width, face.height) * ratio >= self.min_coarse_face:
                    return face
        return self.select_face(self._detect_decoded(decoded), "largest")

    def largest_face(self, image: ImageInput | DecodedImage) -> Face:
        """The largest face of an image (found coarse-first), in original image coordinates.

        Raises ``NoFaceError`` when there is none. Pass a :class:`DecodedImage` (from
        :meth:`load`) to avoid decoding twice when the face is aligned afterwards.
        """
        decoded = self.load(image)
        return scale_face(self._largest_face_decoded(decoded), decoded.scale)

    def detect(self, image: ImageInput | DecodedImage) -> Detections:
        """All faces in an image (BGR arrays for numpy input), in original image coordinates."""
        decoded = self.load(image)
        dets = self._detect_decoded(decoded)
        if decoded.scale == (1.0, 1.0) or len(dets) == 0:
            return dets
        return Detections.from_faces([scale_face(f, decoded.scale) for f in dets])

    def align(self, image: ImageInput | DecodedImage, faces: Detections | Face | Sequence[Face]) -> np.ndarray:
        """Aligned (N, 112, 112, 3) BGR crops of ``faces`` (given in original image coordinates)."""
        decoded = self.load(image)
        if isinstance(faces, Face):
            faces = [faces]
        stacked = np.stack([f.landmarks for f in faces]) if len(faces) else np.zeros((0, 5, 2), np.float32)
        lms = (stacked / np.array(decoded.scale, np.float32)).astype(np.float32)
        return norm_crops(decoded.pixels, lms, self.embedder_card.alignment_template or "arcface_112")

    def embed_aligned(self, crops: np.ndarray | Sequence[ImageInput]) -> np.ndarray:
        """Unit-norm embeddings (N, dim) of already aligned crops (BGR arrays or any image inputs)."""
        return self.embed_aligned_with_norms(crops)[0]

    def embed_aligned_with_norms(self, crops: np.ndarray | Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and their pre-normalisation feature norms (a quality signal)."""
        return self._embed_crops(self._as_crops(crops))

    def _embed_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embed aligned crops, split over ``workers`` threads when there are several."""
        n = len(crops)
        if self.workers < 2 or n < 2:
            return self.embedder.embed(crops)
        parts = np.array_split(np.arange(n), min(self.workers, n))
        pool = self._thread_pool()
        futures = [pool.submit(self.embedder.embed, crops[idx]) for idx in parts[1:]]
        try:
            first = self.embedder.embed(crops[parts[0]])
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        results = [first, *(f.result() for f in futures)]
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])

    def _as_crops(self, crops: np.ndarray | Sequence[ImageInput]) -> np.ndarray:

        w, h = self.embedder.size
        if isinstance(crops, np.ndarray) and crops.ndim == 4:
            arr = crops
            if arr.dtype == np.uint8 and arr.shape[1:] == (h, w, 3):
                return arr
            return np.stack([self._as_crops([c])[0] for c in arr]) if len(arr) else np.zeros((0, h, w, 3), np.uint8)
        out = [self.aligned_crop(item) for item in crops]
        return np.stack(out) if out else np.zeros((0, h, w, 3), np.uint8)

    def aligned_crop(self, image: ImageInput | DecodedImage) -> np.ndarray:
        """An image given as an aligned face crop, as the embedder's BGR input (resized if needed).

        Raises ``NotAlignedError`` when its aspect ratio is not the template's: a photo
        passed as a crop would otherwise be squashed and embedded silently.
        """
        import cv2

        w, h = self.embedder.size
        px = self.load(image).pixels
        if px.shape[:2] == (h, w):
            return px
        ph, pw = px.shape[:2]
        if abs((pw / ph) / (w / h) - 1.0) > ALIGNED_ASPECT_TOLERANCE:
            raise NotAlignedError(
                f"a {pw}x{ph} image is not an aligned face crop (the embedder takes {w}x{h}); "
                "detect and align it first (aligned=False, or --detect)",
                width=pw,
                height=ph,
            )
        return cv2.resize(px, (w, h), interpolation=cv2.INTER_AREA)  # e.g. 224x224 crops: same template

    def select_face(self, dets: Detections, policy: FacePolicy | None = None) -> Face:
        """The face an operation uses, per policy; raises NoFaceError / MultipleFacesError."""
        policy = policy or self.face_policy
        if len(dets) == 0:
            raise NoFaceError("no face found in the image")
        if policy == "reject" and len(dets) > 1:
            raise MultipleFacesError(f"{len(dets)} faces found; the 'reject' policy needs exactly one", faces=len(dets))
        if policy == "best":
            return dets[int(np.argmax(dets.scores))]
        face = dets.largest()
        assert face is not None
        return face

    def embed(
        self,
        image: ImageInput | DecodedImage,
        *,
        aligned: bool = False,
        faces: Literal["all"] | FacePolicy | None = None,
    ) -> list[FaceEmbedding]:
        """Embeddings of the faces in an image: the selected one, or ``faces="all"`` (largest first).

        ``faces`` is a face policy (``largest``, ``best``, ``reject``) or ``all``; by
        default the matcher's ``face_policy``, the same face ``verify`` would use.

        With ``aligned=True`` the image is taken as an aligned crop (resized to the
        model input if needed) and no detection runs. Raises ``NoFaceError`` when
        no face is found.
        """
        if aligned:
            crops = self._as_crops([image])
            emb, norms = self.embedder.embed(crops)
            return [FaceEmbedding(face=None, vector=emb[0], model_id=self.model_id, norm=float(norms[0]))]
        if faces is None:
            faces = self.face_policy
        elif faces != "all" and faces not in FACE_POLICIES:
            raise InvalidArgumentError(f"faces must be 'all' or one of {FACE_POLICIES}, got {faces!r}")
        decoded = self.load(image)
        if faces == "largest":
            chosen_face = self._largest_face_decoded(decoded)
            crop = norm_crops(decoded.pixels, chosen_face.landmarks[None])
            emb, norms = self.embedder.embed(crop)
            return [
                FaceEmbedding(
                    face=scale_face(chosen_face, decoded.scale),
                    vector=emb[0],
                    model_id=self.model_id,
                    norm=float(norms[0]),
                )
            ]
        dets = self._detect_decoded(decoded)
        if faces == "all":
            if len(dets) == 0:
                raise NoFaceError("no face found in the image")
            chosen = list(dets.sorted_by_area())
        else:
            chosen = [self.select_face(dets, "largest" if faces == "largest" else faces)]
        crops = norm_crops(decoded.pixels, np.stack([f.landmarks for f in chosen]))
        emb, norms = self._embed_crops(crops)
        return [
            FaceEmbedding(face=scale_face(f, decoded.scale), vector=e, model_id=self.model_id, norm=float(n))
            for f, e, n in zip(chosen, emb, norms, strict=True)
        ]

    def _face_crop(self, image: ImageInput | DecodedImage, aligned: bool) -> tuple[np.ndarray, Face | None]:
        if aligned:
            return self._as_crops([image])[0], None
        decoded = self.load(image)
        if self.face_policy == "largest":
            face = self._largest_face_decoded(decoded)
        else:
            face = self.select_face(self._detect_decoded(decoded))
        crop = norm_crops(decoded.pixels, face.landmarks[None])[0]
        return crop, scale_face(face, decoded.scale)

    def _face_embedding(self, image: ImageInput | DecodedImage) -> tuple[np.ndarray, Face | None]:
        crop, face = self._face_crop(image, False)
        emb, _ = self.embedder.embed(crop[None])
        return emb[0], face

    def _thread_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="facematch")
            return self._pool

    def close(self) -> None:
        """Stop the worker threads (the matcher stays usable: they restart on demand)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def resolve_threshold(self, threshold: float | None = None, far: float | None = None) -> tuple[float, float | None]:
        """(threshold, target FMR or None): the caller's threshold, or the card's at ``far`` (default FMR)."""
        return self._resolve_threshold(threshold, far)

    def _resolve_threshold(self, threshold: float | None, far: float | None) -> tuple[float, float | None]:
        if threshold is not None and far is not None:
            raise InvalidArgumentError("give either threshold or far, not both")
        for name, value in (("threshold", threshold), ("far", far)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise InvalidArgumentError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if threshold is not None:
            t = float(threshold)
            if not (-1.0 <= t <= 1.0) or not np.isfinite(t):
                raise InvalidArgumentError(f"a cosine threshold must be in [-1, 1], got {threshold}")
            return t, None
        cal = self.embedder_card.calibration
        target = far if far is not None else (cal.default_fmr if cal is not None else None)
        return self.threshold_for(target), target

    def verify(
        self,
        image1: ImageInput | DecodedImage,
        image2: ImageInput | DecodedImage,
        *,
        threshold: float | None = None,
        far: float | None = None,
        aligned: bool = False,
    ) -> VerifyResult:
        """Are the (selected) faces of two images the same person?

        The threshold is ``threshold`` if given, else the embedder card's calibrated
        threshold at false-match rate ``far`` (default: the card's default FMR).
        """
        thr, target = self._resolve_threshold(threshold, far)
        if aligned or self.workers < 2:
            crop1, face1 = self._face_crop(image1, aligned)
            crop2, face2 = self._face_crop(image2, aligned)
            emb, _ = self.embedder.embed(np.stack([crop1, crop2]))
        else:
            # Side by side: the second image in a pool thread, the first in this one. ONNX
            # Runtime and OpenCV release the GIL, so on a CPU this nearly halves the latency.
            second = self._thread_pool().submit(self._face_embedding, image2)
            try:
                vec1, face1 = self._face_embedding(image1)
            except BaseException:
                second.cancel()  # image1's error wins, as in sequential order
                raise
            vec2, face2 = second.result()
            emb = np.stack([vec1, vec2])
        sim = float(np.clip(emb[0] @ emb[1], -1.0, 1.0))
        return VerifyResult(
            is_match=sim >= thr,
            similarity=sim,
            threshold=thr,
            face1=face1,
            face2=face2,
            model_id=self.model_id,
            target_fmr=target,
        )


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity between rows of ``a`` (N, D) and ``b`` (M, D) → (N, M)."""
    a = np.atleast_2d(np.asarray(a, np.float32))
    b = np.atleast_2d(np.asarray(b, np.float32))
    if a.shape[1] != b.shape[1]:
        raise InvalidArgumentError(f"embedding dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return an @ bn.T


_default: FaceMatcher | None = None
_default_lock = threading.Lock()


def default_matcher() -> FaceMatcher:
    """The process-wide matcher on the default pack, created on first use (never at import)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = FaceMatcher()
        return _default


def verify(image1: ImageInput, image2: ImageInput, **kwargs: Any) -> VerifyResult:
    """Verify two images with the default matcher. See :meth:`FaceMatcher.verify`."""
    return default_matcher().verify(image1, image2, **kwargs)


__all__ = ["FaceMatcher", "cosine_similarity", "default_matcher", "scale_face", "verify"]
