"""FaceMatcher: decode → prepare (detect → select → align) → embed → compare, on models described by cards.

These public steps are the one implementation of the pipeline: the SDK's ``verify`` and
``embed``, the gallery's enrolment and identification, the server and the evaluation
tools all compose them. Callers decide *where* a step runs (a thread pool, a
micro-batcher), never *how*.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from .align import norm_crops
from .calibration import verification_threshold
from .cards import DEFAULT_DETECTOR, DEFAULT_EMBEDDER, ModelCard
from .errors import (
    FacematchError,
    InvalidArgumentError,
    ModelMismatchError,
    MultipleFacesError,
    NoFaceError,
    NotAlignedError,
)
from .io import DEFAULT_MAX_PIXELS, DecodedImage, ImageInput, load_image
from .model_files import file_sha256, load_card, resolve_model_path, verify_file
from .runtime import THREADS_ENV, active_providers, create_session, split_torch_providers
from .similarity import unit_rows
from .types import Detections, Face, FaceEmbedding, PreparedImage, VerifyBatchResult, VerifyResult

if TYPE_CHECKING:
    from .explain import Explanation
    from .quality import FaceQuality, QualityPolicy
from .zoo.arcface import ArcFaceEmbedder
from .zoo.scrfd import SCRFD
from .zoo.torch_embedder import TorchEmbedder

logger = logging.getLogger(__name__)

T = TypeVar("T")

ModelRef = str | os.PathLike[str] | ModelCard
FacePolicy = Literal["largest", "best", "reject"]
FACE_POLICIES = ("largest", "best", "reject")
FaceSelection = Literal["largest", "best", "reject", "all"]  # a policy, or every face
FACE_SELECTIONS = (*FACE_POLICIES, "all")
ALIGNED_ASPECT_TOLERANCE = 0.05  # an "aligned" crop of another size must keep the template's aspect ratio


def _load_model(
    ref: ModelRef,
    task: str,
    providers: Sequence[str] | None,
    threads: int | None,
    max_batch: int = 32,
    spin_wait: bool = True,
) -> tuple[ModelCard, Any]:
    card = load_card(ref)
    if card.task != task:
        raise InvalidArgumentError(f"model {card.id!r} is a {card.task} model, expected {task}")
    path = resolve_model_path(card)
    verify_file(card, path)
    session = create_session(
        path,
        providers=providers,
        threads=threads,
        dynamic_batch=task == "embedding" and card.input.dynamic_batch,
        card=card,
        max_batch=max_batch,
        sha256=file_sha256(path),  # hashed (and cached) by verify_file
        spin_wait=spin_wait,
    )
    logger.info("loaded %s model %s from %s", task, card.id, path)
    return card, session


class FaceMatcher:
    """Detect, align and embed faces, and compare them on the unit hypersphere.

    Args:
        detector: detector card id, card path, model path with card, ``ModelCard``,
            a ready ``SCRFD`` wrapper, or ``None`` for the default pack.
        embedder: the same for the embedding model (``FaceMatcher(embedder="my_r50.onnx")``).
        providers: ONNX Runtime providers in priority order (default TensorRT → CUDA → CPU;
            ``FACEMATCH_PROVIDERS`` overrides the default). A provider asked for that does not
            load raises ``ProviderUnavailableError``. ``"torch-cuda"`` (or ``"torch-cpu"``) runs
            the embedder on PyTorch (:class:`~facematch.zoo.torch_embedder.TorchEmbedder`) and
            the detector on the remaining providers, CPU when none remain.
        threads: intra-op threads per session (default: the CPU count divided by ``workers``,
            so concurrent images do not fight over cores; ``FACEMATCH_THREADS`` overrides).
        spin_wait: whether ONNX Runtime's intra-op threads busy-wait for work between runs
            (its default: a little lower latency for back-to-back calls alone on the machine;
            ``False`` when other threads need the cores, as in the server).
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
        quality: measure the quality of every face ``embed`` and ``verify`` return
            (:mod:`facematch.quality`: components and the card's unified score, from the crop,
            the landmarks and the feature norm; no extra model run, well under a millisecond
            per face). ``False`` skips it.
    """

    def __init__(
        self,
        detector: ModelRef | SCRFD | None = None,
        embedder: ModelRef | ArcFaceEmbedder | TorchEmbedder | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        spin_wait: bool = True,
        det_size: int | None = None,
        det_threshold: float | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        face_policy: FacePolicy = "largest",
        decode_max_side: int | None = 1280,
        max_batch: int = 32,
        coarse_det_size: int | None = 320,
        min_coarse_face: float = 24.0,
        workers: int | None = None,
        quality: bool = True,
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
        torch_device, ort_providers = split_torch_providers(providers)
        if torch_device is not None:  # the embedder on torch; the detector on what is left, else CPU
            providers = ort_providers or ["CPUExecutionProvider"]
        if isinstance(detector, SCRFD):
            self.detector = detector
        else:
            card, sess = _load_model(detector or DEFAULT_DETECTOR, "detection", providers, threads, spin_wait=spin_wait)
            self.detector = SCRFD(sess, card)
        self.embedder: ArcFaceEmbedder | TorchEmbedder
        if isinstance(embedder, (ArcFaceEmbedder, TorchEmbedder)):
            self.embedder = embedder
        elif torch_device is not None:
            self.embedder = TorchEmbedder.load(embedder or DEFAULT_EMBEDDER, device=torch_device, max_batch=max_batch)
        else:
            card, sess = _load_model(
                embedder or DEFAULT_EMBEDDER,
                "embedding",
                providers,
                threads,
                max_batch,
                spin_wait=spin_wait,
            )
            self.embedder = ArcFaceEmbedder(sess, card, max_batch=max_batch)
        self.det_size = det_size
        self.det_threshold = det_threshold
        self.max_pixels = max_pixels
        self.face_policy: FacePolicy = face_policy
        self.decode_max_side = decode_max_side
        self.coarse_det_size = coarse_det_size
        self.min_coarse_face = min_coarse_face
        self.workers = workers
        self.quality = quality
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
    def providers(self) -> dict[str, list[str]]:
        """What each model really runs on: ``{"detector": [...], "embedder": [...]}`` (checked at load)."""
        return {"detector": active_providers(self.detector), "embedder": active_providers(self.embedder)}

    @property
    def model_id(self) -> str:
        return self.embedder.card.id

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def threshold_for(self, fmr: float | None = None) -> float:
        """Similarity threshold at a target false-match rate, from the embedder card's calibration."""
        return self.embedder_card.threshold_for(fmr)

    # ---- pipeline steps -------------------------------------------------------------------
    # The public steps every caller composes (SDK, server, gallery, eval):
    #   load (decode) → prepare (detect → select → align) → embed_crops → compare.
    def load(self, image: ImageInput | DecodedImage) -> DecodedImage:
        """Decode an image input under this matcher's limits."""
        return load_image(image, max_pixels=self.max_pixels, max_side=self.decode_max_side)

    def _detect_decoded(self, decoded: DecodedImage) -> Detections:
        return self.detector.detect(decoded.pixels, input_size=self.det_size, score_threshold=self.det_threshold)

    def _largest_face_decoded(self, decoded: DecodedImage) -> tuple[Face, int]:
        """The largest face (decoded coordinates), found coarse-first, and how many faces that pass found.

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
                    return face, len(dets)
        dets = self._detect_decoded(decoded)
        return self.select_face(dets, "largest"), len(dets)

    def largest_face(self, image: ImageInput | DecodedImage) -> Face:
        """The largest face of an image (found coarse-first), in original image coordinates.

        Raises ``NoFaceError`` when there is none.
        """
        decoded = self.load(image)
        return self._largest_face_decoded(decoded)[0].scaled(decoded.scale)

    def detect(self, image: ImageInput | DecodedImage) -> Detections:
        """All faces in an image (BGR arrays for numpy input), in original image coordinates."""
        decoded = self.load(image)
        return self._detect_decoded(decoded).scaled(decoded.scale)

    def align(self, image: ImageInput | DecodedImage, faces: Detections | Face | Sequence[Face]) -> np.ndarray:
        """Aligned (N, H, W, 3) BGR crops of ``faces`` (given in original image coordinates)."""
        decoded = self.load(image)
        if isinstance(faces, Face):
            faces = [faces]
        dets = faces if isinstance(faces, Detections) else Detections.from_faces(list(faces))
        sx, sy = decoded.scale
        return self._crops(decoded, dets.scaled((1.0 / sx, 1.0 / sy)))

    def _crops(self, decoded: DecodedImage, faces: Detections) -> np.ndarray:
        """Aligned crops of ``faces`` given in ``decoded`` pixel coordinates."""
        return norm_crops(decoded.pixels, faces.landmarks, self.embedder_card.alignment_template or "arcface_112")

    def prepare(
        self,
        image: ImageInput | DecodedImage,
        faces: FaceSelection | None = None,
        *,
        max_faces: int | None = None,
        aligned: bool = False,
    ) -> PreparedImage:
        """Decode (once), detect, select and align: the faces an operation uses, with their crops.

        ``faces``: ``largest`` (found coarse-first), ``best`` (highest detection score),
        ``reject`` (exactly one face, else ``MultipleFacesError``), or ``all`` (every face,
        largest first, at most ``max_faces``); default the matcher's ``face_policy``.
        Raises ``NoFaceError`` when no face is found. With ``aligned=True`` the image is
        taken as an aligned crop (resized to the model input if its aspect ratio fits) and
        no detection runs.

        Faces come back in original image coordinates; the crops are cut from the decoded
        pixels directly, so coordinates never make a round trip.
        """
        if max_faces is not None and (isinstance(max_faces, bool) or not isinstance(max_faces, int) or max_faces < 1):
            raise InvalidArgumentError(f"max_faces must be a positive integer, got {max_faces!r}")
        decoded = self.load(image)
        if aligned:
            return PreparedImage(Detections.empty(), self.aligned_crop(decoded)[None], 1, decoded.original_size, True)
        policy = self._selection(faces)
        if policy == "largest":
            face, total = self._largest_face_decoded(decoded)
            chosen = Detections.from_faces([face])
        else:
            dets = self._detect_decoded(decoded)
            total = len(dets)
            if policy == "all":
                if total == 0:
                    raise NoFaceError("no face found in the image")
                chosen = dets.sorted_by_area()[:max_faces]
            else:
                chosen = Detections.from_faces([self.select_face(dets, policy)])
        return PreparedImage(
            faces=chosen.scaled(decoded.scale),
            crops=self._crops(decoded, chosen),
            faces_total=total,
            image_size=decoded.original_size,
        )

    def prepare_each(
        self,
        images: Sequence[ImageInput | DecodedImage],
        faces: FaceSelection | None = None,
        *,
        max_faces: int | None = None,
        aligned: bool = False,
    ) -> list[PreparedImage | FacematchError]:
        """:meth:`prepare` every image, ``workers`` at a time, keeping each image's error in its place.

        The calling thread and ``workers - 1`` pool threads take the images in turn (decode and
        detection release the GIL). A ``FacematchError`` of one image (``NoFaceError``,
        ``InvalidImageError``, ...) stands in its place; any other exception propagates.
        """
        self._selection(faces)  # refuse a bad option before any work
        return self._map(lambda image: self.prepare(image, faces, max_faces=max_faces, aligned=aligned), images)

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T | FacematchError]:
        """``fn`` over ``items`` on up to ``workers`` threads (this one included), results in order."""
        n = len(items)
        results: list[T | FacematchError | None] = [None] * n
        if n == 0:
            return []
        lock = threading.Lock()
        order = iter(range(n))
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                with lock:
                    i = next(order, None)
                if i is None:
                    return
                try:
                    results[i] = fn(items[i])
                except FacematchError as exc:
                    results[i] = exc
                except BaseException:
                    stop.set()
                    raise

        helpers = min(self.workers, n) - 1
        futures = [self._thread_pool().submit(drain) for _ in range(helpers)] if helpers > 0 else []
        try:
            drain()
        finally:
            for f in futures:
                f.result()  # a helper's unexpected error propagates here
        return [r for r in results if r is not None]

    def _selection(self, faces: object) -> FaceSelection:
        if faces is None:
            return self.face_policy
        if faces not in FACE_SELECTIONS:
            raise InvalidArgumentError(f"faces must be one of {FACE_SELECTIONS}, got {faces!r}")
        return faces  # type: ignore[return-value]

    def embed_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit-norm embeddings (N, dim) and pre-normalisation norms (N,) of aligned BGR uint8 crops.

        Several crops are split over ``workers`` threads (one ONNX Runtime session call each).
        """
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

    def embed_aligned(self, crops: np.ndarray | Sequence[ImageInput]) -> np.ndarray:
        """Unit-norm embeddings (N, dim) of already aligned crops (BGR arrays or any image inputs)."""
        return self.embed_aligned_with_norms(crops)[0]

    def embed_aligned_with_norms(self, crops: np.ndarray | Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and their pre-normalisation feature norms (a quality signal)."""
        return self.embed_crops(self._as_crops(crops))

    def _as_crops(self, crops: np.ndarray | Sequence[ImageInput]) -> np.ndarray:
        w, h = self.embedder.size
        if isinstance(crops, np.ndarray) and crops.ndim == 4:
            arr = crops
            if arr.dtype == np.uint8 and arr.shape[1:] == (h, w, 3):
                return arr
            return np.stack([self.aligned_crop(c) for c in arr]) if len(arr) else np.zeros((0, h, w, 3), np.uint8)
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
        """The face an operation uses, per policy; raises NoFaceError / MultipleFacesError.

        The one face-selection rule: :meth:`prepare` (hence verify, embed, the gallery and
        the server) goes through it.
        """
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
        faces: FaceSelection | None = None,
        max_faces: int | None = None,
    ) -> list[FaceEmbedding]:
        """Embeddings of the faces in an image: :meth:`prepare`, then :meth:`embed_crops`.

        ``faces`` is a face policy (``largest``, ``best``, ``reject``) or ``all`` (largest
        first); by default the matcher's ``face_policy``, the same face ``verify`` uses.
        With ``aligned=True`` the image is taken as an aligned crop and no detection runs.
        Raises ``NoFaceError`` when no face is found.
        """
        prep = self.prepare(image, faces, max_faces=max_faces, aligned=aligned)
        emb, norms = self.embed_crops(prep.crops)
        quals = self.assess(prep, norms) if self.quality else (None,) * len(prep)
        return [
            FaceEmbedding(
                face=prep.face(i), vector=emb[i], model_id=self.model_id, norm=float(norms[i]), quality=quals[i]
            )
            for i in range(len(prep))
        ]

    def assess(self, prepared: PreparedImage, norms: np.ndarray | None = None) -> tuple[FaceQuality, ...]:
        """Quality of each face of a prepared image (:func:`facematch.quality.assess` with this embedder's card).

        ``norms``: the crops' pre-normalisation feature norms from :meth:`embed_crops` (without
        them the feature norm, hence the unified score, is not measured).
        """
        from .quality import assess

        return assess(prepared, norms, self.embedder_card)

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

    # ---- comparing --------------------------------------------------------------------------
    def resolve_threshold(
        self, threshold: float | None = None, fmr: float | None = None, *, far: float | None = None
    ) -> tuple[float, float | None]:
        """(threshold, target FMR or None): the caller's cosine threshold, or the card's at ``fmr``.

        With neither given, the card's default FMR is used. ``far`` is a deprecated alias of ``fmr``.
        """
        fmr = _deprecated_far(fmr, far)
        return verification_threshold(threshold, fmr, self.embedder_card.calibration, model_id=self.model_id)

    def compare(
        self,
        embedding1: FaceEmbedding | np.ndarray,
        embedding2: FaceEmbedding | np.ndarray,
        *,
        threshold: float | None = None,
        fmr: float | None = None,
        face1: Face | None = None,
        face2: Face | None = None,
    ) -> VerifyResult:
        """Compare two embeddings: their cosine similarity and the decision at the threshold.

        Embeddings are :class:`FaceEmbedding` results (whose model must be this matcher's)
        or vectors of this model's dimension; both are L2-normalised before the dot
        product. The threshold is ``threshold`` if given, else the card's calibrated
        threshold at false-match rate ``fmr`` (default: the card's default FMR). ``face1``
        and ``face2`` default to the embeddings' faces.
        """
        thr, target = self.resolve_threshold(threshold, fmr)
        sim = self.similarity(embedding1, embedding2)
        cal = self.embedder_card.calibration
        return VerifyResult(
            is_match=sim >= thr,
            similarity=sim,
            threshold=thr,
            face1=face1 if face1 is not None else getattr(embedding1, "face", None),
            face2=face2 if face2 is not None else getattr(embedding2, "face", None),
            model_id=self.model_id,
            target_fmr=target,
            threshold_extrapolated=target is not None and cal is not None and cal.extrapolates(target),
            quality1=getattr(embedding1, "quality", None),
            quality2=getattr(embedding2, "quality", None),
        )

    def similarity(self, embedding1: FaceEmbedding | np.ndarray, embedding2: FaceEmbedding | np.ndarray) -> float:
        """Cosine similarity of two embeddings of this model, in [-1, 1] (no decision; see :meth:`compare`)."""
        vectors = [self._comparable(embedding1, "embedding1"), self._comparable(embedding2, "embedding2")]
        a, b = unit_rows(np.stack(vectors))
        return float(np.clip(a @ b, -1.0, 1.0))

    def _comparable(self, embedding: FaceEmbedding | np.ndarray, name: str) -> np.ndarray:
        if isinstance(embedding, FaceEmbedding):
            if embedding.model_id and embedding.model_id != self.model_id:
                raise ModelMismatchError(
                    f"{name} was made by {embedding.model_id!r}; this matcher compares {self.model_id!r} embeddings",
                    model=embedding.model_id,
                )
            vec = embedding.vector
        else:
            try:
                vec = np.asarray(embedding, np.float32).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(f"{name} must be a numeric vector: {exc}") from exc
        if vec.shape != (self.dim,) or not np.all(np.isfinite(vec)) or not np.any(vec):
            raise InvalidArgumentError(f"{name} must be a finite, non-zero vector of dimension {self.dim}")
        return vec

    def _first_embedding(self, image: ImageInput | DecodedImage, aligned: bool, label: str) -> FaceEmbedding:
        """The selected face's embedding; an error names the image (its path, else ``label``)."""
        try:
            return self.embed(image, aligned=aligned)[0]
        except FacematchError as exc:
            raise exc.about(os.fspath(image) if isinstance(image, (str, os.PathLike)) else label) from exc

    def verify(
        self,
        image1: ImageInput | DecodedImage,
        image2: ImageInput | DecodedImage,
        *,
        threshold: float | None = None,
        fmr: float | None = None,
        aligned: bool = False,
        far: float | None = None,
    ) -> VerifyResult:
        """Are the (selected) faces of two images the same person? :meth:`prepare`, embed, :meth:`compare`.

        The threshold is ``threshold`` if given, else the embedder card's calibrated
        threshold at false-match rate ``fmr`` (default: the card's default FMR).
        ``far`` is a deprecated alias of ``fmr``.
        """
        fmr = _deprecated_far(fmr, far)
        self.resolve_threshold(threshold, fmr)  # refuse bad options before any work
        if aligned or self.workers < 2:
            e1 = self._first_embedding(image1, aligned, "image1")
            e2 = self._first_embedding(image2, aligned, "image2")
        else:
            # Side by side: the second image in a pool thread, the first in this one. ONNX
            # Runtime and OpenCV release the GIL, so on a CPU this nearly halves the latency.
            second = self._thread_pool().submit(self._first_embedding, image2, aligned, "image2")
            try:
                e1 = self._first_embedding(image1, aligned, "image1")
            except BaseException:
                second.cancel()  # image1's error wins, as in sequential order
                raise
            e2 = second.result()
        return self.compare(e1, e2, threshold=threshold, fmr=fmr)

    def verify_many(
        self,
        pairs: Sequence[tuple[ImageInput | DecodedImage, ImageInput | DecodedImage]],
        *,
        threshold: float | None = None,
        fmr: float | None = None,
        aligned: bool = False,
        chunk: int = 256,
        quality: QualityPolicy | None = None,
    ) -> VerifyBatchResult:
        """:meth:`verify` for many pairs: one :class:`PairResult` per pair, errors kept per pair.

        Each distinct image (the same path, bytes or object) is prepared once however many
        pairs use it, ``workers`` images at a time (:meth:`prepare_each`), and embedded in
        batches (:meth:`embed_crops`); then every pair is decided by :meth:`compare` at one
        threshold (``threshold``, else the card's at ``fmr``; default the card's default FMR).
        An image without a usable face fails only the pairs that use it (``pair.error``).
        ``chunk`` images are prepared and embedded at a time, so memory stays bounded.
        ``quality``: a :class:`~facematch.quality.QualityPolicy` (e.g. ``PROBE_POLICY``, the
        server's default for ``/verify/batch``); an image whose face fails it fails the pairs
        that use it with a ``LowQualityError`` (``pair.error.details["reasons"]``). Default: no gate.
        """
        from .batch import distinct_images, embedded_images, verify_pairs
        from .quality import assess_each

        self.resolve_threshold(threshold, fmr)  # refuse bad options before any work
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise InvalidArgumentError(f"chunk must be a positive integer, got {chunk!r}")
        images, index_pairs = distinct_images(pairs)
        embedded: list[FaceEmbedding | FacematchError | None] = []
        for start in range(0, len(images), chunk):
            prepared = self.prepare_each(images[start : start + chunk], aligned=aligned)
            crops = [p.crops[:1] for p in prepared if isinstance(p, PreparedImage)]
            if crops:
                emb, norms = self.embed_crops(np.concatenate(crops))
            else:
                emb, norms = np.zeros((0, self.dim), np.float32), np.zeros((0,), np.float32)
            gated = quality is not None and bool(quality.limits)
            quals = assess_each(self, prepared, norms) if self.quality or gated else None
            embedded += embedded_images(prepared, emb, self.model_id, quals, quality)
        return verify_pairs(self, index_pairs, embedded, threshold=threshold, fmr=fmr)

    def explain(
        self,
        image1: ImageInput | DecodedImage,
        image2: ImageInput | DecodedImage,
        *,
        method: Literal["auto", "decomposition", "occlusion"] = "auto",
        aligned: bool = False,
        threshold: float | None = None,
        fmr: float | None = None,
    ) -> Explanation:
        """Why the faces :meth:`verify` compares are (not) a match: one similarity map per face.

        ``decomposition`` splits the cosine exactly over the last feature map (the card's
        ``explain`` block names it; checked on every pair), ``occlusion`` measures the drop when
        each cell is covered (any model), ``auto`` tries the first and falls back to the second.
        See :mod:`facematch.explain`; the graphs it needs are built on first use.
        """
        from .explain import explain_images

        return explain_images(self, image1, image2, method=method, aligned=aligned, threshold=threshold, fmr=fmr)


def _deprecated_far(fmr: float | None, far: float | None) -> float | None:
    """``far=`` is the old name of ``fmr=`` (the same quantity: the false-match rate)."""
    if far is None:
        return fmr
    warnings.warn("far= is deprecated; use fmr= (the false-match rate)", DeprecationWarning, stacklevel=3)
    if fmr is not None:
        raise InvalidArgumentError("give fmr (or its deprecated alias far), not both")
    return far


_default: FaceMatcher | None = None
_default_lock = threading.Lock()


def default_matcher() -> FaceMatcher:
    """The process-wide matcher on the default pack, created on first use (never at import)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = FaceMatcher()
        return _default


__all__ = ["FACE_POLICIES", "FACE_SELECTIONS", "FaceMatcher", "FacePolicy", "FaceSelection", "default_matcher"]
