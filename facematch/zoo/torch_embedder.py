"""The PyTorch embedder runtime: an ArcFace-family model on torch (CUDA or CPU), same interface as ArcFaceEmbedder.

Many GPU machines have PyTorch with CUDA but neither onnxruntime-gpu nor TensorRT. For the
architectures the export package defines (iResNet, MobileFaceNet including the released
``w600k_mbf`` head, SFNet), the torch module is rebuilt from the ONNX model's own weights
(:func:`facematch.export.port.port_onnx_weights`) or loaded from a training checkpoint, and
runs:

- in fp16 on CUDA (fp32 on CPU), after an fp32 self-check against the ONNX model on CPU
  ONNX Runtime (cosine >= ``SELF_CHECK_COSINE`` on a fixed batch) at load;
- in fixed batch buckets (powers of two up to ``max_batch``): a batch is padded up to its
  bucket, so CUDA graphs (``mode="graphs"``, the CUDA default: one captured graph per
  bucket) and ``torch.compile`` (``mode="compile"``) never see a new shape; ``"eager"``
  runs the module as it is (the CPU default).

Preprocessing is :func:`facematch.preprocess.to_blob` and normalisation
:func:`facematch.similarity.l2_normalize`, exactly as in ArcFaceEmbedder: only the network
runs elsewhere. ``FaceMatcher(providers=["torch-cuda"])`` (or ``FACEMATCH_PROVIDERS=torch-cuda``)
selects it; torch is imported only then (it comes with the ``export`` extra).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..cards import ModelCard
from ..errors import BackendUnavailableError, InvalidArgumentError, ModelError
from ..preprocess import to_blob
from ..similarity import l2_normalize
from .arcface import ArcFaceEmbedder

logger = logging.getLogger(__name__)

Mode = Literal["eager", "graphs", "compile"]
MODES = ("eager", "graphs", "compile")
DEVICES = ("cuda", "cpu")
SELF_CHECK_COSINE = 0.999
# Released models whose card does not name the architecture (cards written by `export onnx` do).
KNOWN_ARCHS = {"w600k_mbf": "mbf_fc"}


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            "the torch runtime needs PyTorch: pip install 'facematch[export]' (or a CUDA build of torch)"
        ) from exc
    return torch


def card_arch(card: ModelCard) -> str | None:
    """The export package's architecture name for a card: written by ``export onnx``, or a known release."""
    options = (card.export or {}).get("options") or {}
    arch = options.get("arch") if isinstance(options, dict) else None
    return str(arch) if arch else KNOWN_ARCHS.get(card.id)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch``, plus ``max_batch`` itself."""
    if max_batch < 1:
        raise InvalidArgumentError(f"max_batch must be >= 1, got {max_batch}")
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return (*out, max_batch)


def build_module(card: ModelCard, model_path: Path, *, arch: str | None = None, checkpoint: Path | None = None) -> Any:
    """The torch backbone of an embedding card: from ``checkpoint`` if given, else ported from the ONNX weights."""
    import_torch()
    from ..export.backbones import build_backbone, canonical_arch

    name = arch or card_arch(card)
    if name is None:
        raise InvalidArgumentError(
            f"the torch runtime does not know the architecture of {card.id!r}; pass arch= "
            "(one of the export package's: r18..r200, mbf, mbf_fc, sfnet...)"
        )
    name = canonical_arch(name)
    assert card.embedding is not None and card.input.size is not None
    size = card.input.size[1]
    if checkpoint is not None:
        from ..export.checkpoint import load_backbone

        module, _ = load_backbone(name, checkpoint, input_size=size)
        return module.eval()
    from ..export.port import port_onnx_weights

    module = build_backbone(name, num_features=card.embedding.dim, input_size=size)
    module.load_state_dict(port_onnx_weights(model_path, module))
    return module.eval()


class TorchEmbedder:
    """Embeds aligned face crops with a torch module; the same ``embed``/``check_crops`` as ArcFaceEmbedder."""

    def __init__(
        self,
        module: Any,
        card: ModelCard,
        *,
        device: str = "cuda",
        max_batch: int = 32,
        precision: Literal["fp16", "fp32"] | None = None,
        mode: Mode | None = None,
    ) -> None:
        torch = import_torch()
        if card.task != "embedding" or card.embedding is None or card.input.size is None:
            raise InvalidArgumentError(f"card {card.id!r} is not an embedding card")
        if device not in DEVICES:
            raise InvalidArgumentError(f"torch device must be one of {DEVICES}, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"providers=['torch-cuda'] but torch {torch.__version__} sees no CUDA GPU "
                "(a CPU build of torch, or no driver); use 'torch-cpu' or the ONNX Runtime providers"
            )
        precision = precision or ("fp16" if device == "cuda" else "fp32")
        mode = mode or ("graphs" if device == "cuda" else "eager")
        if precision not in ("fp16", "fp32"):
            raise InvalidArgumentError(f"precision must be fp16 or fp32, got {precision!r}")
        if mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "graphs" and device != "cuda":
            raise InvalidArgumentError("CUDA graphs need device='cuda' (use mode='eager' or 'compile' on CPU)")
        self.card = card
        self.dim = card.embedding.dim
        self.size: tuple[int, int] = card.input.size
        self.device = device
        self.precision = precision
        self.mode: Mode = mode
        self.max_batch = max_batch if card.input.dynamic_batch else 1
        self.buckets = batch_buckets(self.max_batch)
        self.providers = [f"torch-{device}"]
        self._torch = torch
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self.module = module.eval().to(device=device, dtype=self._dtype)
        # NHWC on CUDA: cuDNN's tensor-core convolutions want channels-last
        self._format = torch.channels_last if device == "cuda" else torch.contiguous_format
        self.module = self.module.to(memory_format=self._format)
        self._forward = torch.compile(self.module, dynamic=False) if mode == "compile" else self.module
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()  # graph buffers (and one CUDA stream) per embedder

    @classmethod
    def load(
        cls,
        ref: str | os.PathLike[str] | ModelCard,
        *,
        device: str = "cuda",
        max_batch: int = 32,
        precision: Literal["fp16", "fp32"] | None = None,
        mode: Mode | None = None,
        arch: str | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        self_check: bool = True,
    ) -> TorchEmbedder:
        """An embedder for a card (id, card path, model path or ``ModelCard``), its file verified like ONNX loads.

        ``self_check`` compares the fp32 module with the ONNX model on CPU ONNX Runtime before
        casting to ``precision``; a cosine below ``SELF_CHECK_COSINE`` raises ``ModelError``.
        """
        from ..model_files import load_card, resolve_model_path, verify_file

        card = load_card(ref)
        if card.task != "embedding":
            raise InvalidArgumentError(f"model {card.id!r} is a {card.task} model, expected embedding")
        path = resolve_model_path(card)
        verify_file(card, path)
        module = build_module(card, path, arch=arch, checkpoint=Path(checkpoint) if checkpoint else None)
        if self_check:
            cos = self_check_cosine(module, card, path)
            if cos < SELF_CHECK_COSINE:
                raise ModelError(
                    f"the torch module of {card.id!r} disagrees with its ONNX model (min cosine {cos:.5f} < "
                    f"{SELF_CHECK_COSINE}); wrong architecture or checkpoint?"
                )
            logger.info("torch %s module matches its ONNX model (min cosine %.6f)", card.id, cos)
        return cls(module, card, device=device, max_batch=max_batch, precision=precision, mode=mode)

    # ---- ArcFaceEmbedder's interface ------------------------------------------------------------
    def check_crops(self, crops: np.ndarray) -> np.ndarray:
        return ArcFaceEmbedder.check_crops(self, crops)  # type: ignore[arg-type]  # the one crop rule

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit-norm embeddings (N, dim) and pre-normalisation norms (N,) for aligned BGR crops."""
        crops = self.check_crops(crops)
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0,), np.float32)
        feats, norms = [], []
        for start in range(0, len(crops), self.max_batch):
            blob = to_blob(crops[start : start + self.max_batch], self.card.input, self.size)
            emb, nrm = l2_normalize(self.run_blob(blob))
            feats.append(emb)
            norms.append(nrm)
        return np.concatenate(feats), np.concatenate(norms)

    # ---- the network ----------------------------------------------------------------------------
    def bucket_for(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def run_blob(self, blob: np.ndarray) -> np.ndarray:
        """Raw features (N, dim) float32 of a preprocessed NCHW batch of at most ``max_batch``."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(blob, np.float32))
        if self.device == "cuda":
            x = x.pin_memory().to("cuda", non_blocking=True)
        with self._lock:
            out = self.run_tensor(x.to(self._dtype))
            return np.asarray(out.float().cpu().numpy(), np.float32).reshape(len(blob), -1)

    def run_tensor(self, x: Any) -> Any:
        """Raw features of a device tensor ``(n, 3, h, w)`` in the module dtype (n <= max_batch), bucket-padded."""
        torch = self._torch
        n = int(x.shape[0])
        if n > self.max_batch:
            raise InvalidArgumentError(f"batch of {n} is larger than max_batch={self.max_batch}")
        x = x.contiguous(memory_format=self._format)
        if self.mode == "eager":
            with torch.inference_mode():
                return _features(self._forward(x))
        bucket = self.bucket_for(n)
        if self.mode == "compile":
            if n < bucket:
                x = torch.cat([x, x.new_zeros((bucket - n, *x.shape[1:]))])
            with torch.inference_mode():
                return _features(self._forward(x))[:n]
        graph, static_in, static_out = self._graph(bucket, x)
        static_in[:n].copy_(x)
        graph.replay()
        return static_out[:n]

    def _graph(self, bucket: int, like: Any) -> tuple[Any, Any, Any]:
        entry = self._graphs.get(bucket)
        if entry is not None:
            return entry
        torch = self._torch
        static_in = torch.zeros((bucket, *like.shape[1:]), dtype=self._dtype, device="cuda")
        static_in = static_in.contiguous(memory_format=self._format)
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up: cuDNN picks its kernels outside the capture
                    self.module(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = _features(self.module(static_in))
        entry = (graph, static_in, static_out)
        self._graphs[bucket] = entry
        logger.info("captured a CUDA graph for %s at batch %d", self.card.id, bucket)
        return entry

    def warmup(self) -> None:
        """Run (and for graphs/compile, capture or compile) every bucket once."""
        w, h = self.size
        for b in self.buckets:
            self.run_blob(np.zeros((b, 3, h, w), np.float32))


def _features(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def self_check_cosine(module: Any, card: ModelCard, path: Path, *, batch: int = 4, seed: int = 0) -> float:
    """Min cosine between the fp32 torch module and the ONNX model (CPU ONNX Runtime) on a fixed random batch."""
    torch = import_torch()
    from ..runtime import create_session

    assert card.input.size is not None
    w, h = card.input.size
    n = batch if card.input.dynamic_batch else 1
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, (n, 3, h, w)).astype(np.float32)
    sess = create_session(path, providers=["CPUExecutionProvider"], dynamic_batch=card.input.dynamic_batch)
    ref = np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], np.float32).reshape(n, -1)
    fp32 = module.float().cpu().eval()
    with torch.inference_mode():
        got = _features(fp32(torch.from_numpy(x))).float().numpy().reshape(n, -1)
    a, b = l2_normalize(ref)[0], l2_normalize(got)[0]
    return float(np.min(np.sum(a * b, axis=1)))


__all__ = ["KNOWN_ARCHS", "MODES", "SELF_CHECK_COSINE", "TorchEmbedder", "batch_buckets", "build_module", "card_arch"]
