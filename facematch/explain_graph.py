"""The graphs behind the exact decomposition: the feature map as an output, and the head on its own.

The embedder card's ``explain`` block names the tensor ``F`` (``N×C×H×W``) that feeds the
embedding head. From the embedder's ONNX file this module derives, on first use:

* a *features* graph: the model with ``F`` (and the embedding) as outputs, so one run gives
  both. When the file already outputs ``F`` (``facematch export`` writes it), the embedder's
  own session is used and nothing is built;
* a *head* graph: the nodes between ``F`` and the embedding, with ``F`` as its input.

``onnx`` is imported only here, when a decomposition is first asked for. The derived graphs
are kept in memory per embedder and on disk under the user's cache folder
(``$FACEMATCH_CACHE_DIR/explain``), keyed by the model's sha256, so a new process skips the
build. Nothing about the graph is guessed: a tensor the card names but the graph lacks, a head
that reads anything but ``F``, or a feature of another shape refuse the decomposition with
:class:`~facematch.errors.ExplanationUnavailableError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cards import ExplainSpec, ModelCard
from .errors import ExplanationUnavailableError, FacematchError
from .preprocess import to_blob
from .runtime import create_session

logger = logging.getLogger(__name__)

GRAPH_VERSION = 1  # bump when the derived graphs change, so old cache entries are not reused
CACHE_SUBDIR = "explain"


@dataclass(frozen=True)
class Decomposition:
    """Per-position contributions of one explained pair (float64).

    ``cells[i]`` (H, W) are image ``i``'s terms ``(A_p F_p) · ê_j / ‖e_i‖`` and ``bias[i]`` its
    bias term ``b · ê_j / ‖e_i‖``; ``residual[i] = |Σ cells[i] + bias[i] − similarity|``.
    """

    cells: np.ndarray
    bias: np.ndarray
    residual: np.ndarray


class Decomposer:
    """Feature maps and the head decomposition for one embedder (see the module docstring)."""

    def __init__(self, card: ModelCard, spec: ExplainSpec, features: Any, head: Any, embedding_output: str) -> None:
        self.card = card
        self.spec = spec
        self.features_session = features
        self.head_session = head
        self.embedding_output = embedding_output
        self._input_name = features.get_inputs()[0].name
        self._head_input = head.get_inputs()[0].name
        assert card.input.size is not None
        self.size: tuple[int, int] = card.input.size

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the feature map."""
        _, h, w = self.spec.feature_shape
        return h, w

    def features(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw embeddings (N, D), feature maps (N, C, H, W)) of aligned BGR crops, from one run."""
        blob = to_blob(crops, self.card.input, self.size)
        raw, feats = self.features_session.run([self.embedding_output, self.spec.feature], {self._input_name: blob})
        feats = np.asarray(feats, np.float32)
        if feats.shape[1:] != tuple(self.spec.feature_shape):
            raise ExplanationUnavailableError(
                f"the card of {self.card.id!r} says feature {self.spec.feature!r} is "
                f"{list(self.spec.feature_shape)}, but the graph computes {list(feats.shape[1:])}"
            )
        return np.asarray(raw, np.float32).reshape(len(crops), -1), feats

    def decompose(self, feats: np.ndarray, raw: np.ndarray, similarity: float) -> Decomposition:
        """Evaluate the head with one position kept at a time (a batch of H·W + 1 per image).

        Row ``p`` holds ``F`` zeroed everywhere but position ``p``; the last row is all zeros,
        i.e. the head's bias ``b``. For an affine head ``h(F) = A·vec(F) + b`` the rows minus
        ``b`` are exactly the terms ``A_p F_p``, which sum (with ``b``) to the embedding.
        """
        n, c, h, w = feats.shape
        if n != 2 or raw.shape[0] != 2:
            raise ValueError("decompose explains exactly one pair")
        p = h * w
        batch = np.zeros((n, p + 1, c, h, w), feats.dtype)
        for k in range(p):
            y, x = divmod(k, w)
            batch[:, k, :, y, x] = feats[:, :, y, x]
        (out,) = self.head_session.run(None, {self._head_input: batch.reshape(n * (p + 1), c, h, w)})
        out = np.asarray(out, np.float64).reshape(n, p + 1, -1)
        bias_vec = out[:, p]
        terms = out[:, :p] - bias_vec[:, None]
        e = raw.astype(np.float64)
        norms = np.linalg.norm(e, axis=1)
        unit = e / norms[:, None]
        cells = np.stack([terms[i] @ unit[1 - i] / norms[i] for i in range(2)]).reshape(2, h, w)
        bias = np.array([bias_vec[i] @ unit[1 - i] / norms[i] for i in range(2)])
        residual = np.abs(cells.reshape(2, -1).sum(1) + bias - similarity)
        return Decomposition(cells=cells, bias=bias, residual=residual)


# ---- building -------------------------------------------------------------------------------


def _unavailable(card: ModelCard, why: str) -> ExplanationUnavailableError:
    return ExplanationUnavailableError(f"no exact decomposition for model {card.id!r}: {why}", model=card.id)


def explain_spec(card: ModelCard) -> ExplainSpec:
    """The card's ``explain`` block, or a clear refusal naming what is missing."""
    if card.explain is None:
        raise _unavailable(
            card,
            "its card has no 'explain' block naming the feature tensor that feeds the head "
            "(see docs/explain.md); method='occlusion' works for any model",
        )
    return card.explain


def _cache_dir() -> Path:
    from .eval.cache import default_cache_dir

    return default_cache_dir() / CACHE_SUBDIR


def _cache_key(card: ModelCard, spec: ExplainSpec, with_features: bool) -> str:
    text = json.dumps(
        [GRAPH_VERSION, card.sha256, spec.feature, list(spec.feature_shape), spec.embedding_output, with_features]
    )
    return f"{card.id}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _read_cached(key: str) -> dict[str, bytes] | None:
    """The cached graphs of ``key`` if every file is present and has the sha256 its manifest says."""
    folder = _cache_dir()
    try:
        manifest = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        out = {}
        for kind, digest in manifest["files"].items():
            data = (folder / f"{key}.{kind}.onnx").read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                return None
            out[kind] = data
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cached(key: str, graphs: dict[str, bytes]) -> None:
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for kind, data in graphs.items():
            tmp = folder / f"{key}.{kind}.onnx.tmp{os.getpid()}"
            tmp.write_bytes(data)
            os.replace(tmp, folder / f"{key}.{kind}.onnx")
        manifest = {"version": GRAPH_VERSION, "files": {k: hashlib.sha256(v).hexdigest() for k, v in graphs.items()}}
        tmp = folder / f"{key}.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(manifest), encoding="utf-8")
        os.replace(tmp, folder / f"{key}.json")
    except OSError as exc:  # a read-only home: the graphs still live in memory
        logger.info("explain graphs not cached in %s: %s", folder, exc)


def build_graphs(model_path: Path, card: ModelCard, spec: ExplainSpec, with_features: bool) -> dict[str, bytes]:
    """Serialised ``head`` (and, when ``with_features``, ``features``) graphs; batch dimensions left free."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise _unavailable(card, f"{model_path.name} is not a readable ONNX model ({exc})") from exc
    graph = model.graph
    out_name = spec.embedding_output or graph.output[0].name
    producers = {o: node for node in graph.node for o in node.output}
    if spec.feature not in producers:
        raise _unavailable(card, f"the card names feature tensor {spec.feature!r}, which no node of the graph computes")
    if out_name not in producers:
        raise _unavailable(card, f"the card names embedding tensor {out_name!r}, which no node of the graph computes")
    initializers = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - set(initializers)
    aliases = _identity_aliases(graph, spec.feature)

    # The head: every node on a path from the feature to the embedding, in graph order.
    needed: set[int] = set()
    stack, seen = [out_name], set()
    while stack:
        name = stack.pop()
        if not name or name in aliases or name in initializers or name in seen:
            continue
        seen.add(name)
        if name in graph_inputs:
            raise _unavailable(
                card,
                f"the head reads the graph input {name!r}, not only the feature {spec.feature!r}: that tensor does "
                "not cut the graph between backbone and head (an fp16 conversion re-routes it through casts)",
            )
        node = producers[name]
        needed.add(id(node))
        stack.extend(node.input)
    nodes = [n for n in graph.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    # the head may read the feature under another name (an Identity of it): feed those from the input
    nodes = [helper.make_node("Identity", [spec.feature], [a]) for a in sorted(used & aliases - {spec.feature})] + nodes
    c, h, w = spec.feature_shape
    types = _tensor_types(model, {spec.feature, out_name})
    elem, dims = types.get(spec.feature, (int(onnx.TensorProto.FLOAT), []))
    out_elem = types.get(out_name, (int(onnx.TensorProto.FLOAT), []))[0]
    if len(dims) == 4 and None not in dims[1:] and tuple(dims[1:]) != (c, h, w):
        raise _unavailable(
            card, f"the card says feature {spec.feature!r} is {[c, h, w]}, but the graph computes {dims[1:]}"
        )
    head = helper.make_model(
        helper.make_graph(
            nodes,
            "facematch_explain_head",
            [helper.make_tensor_value_info(spec.feature, elem, ["batch", c, h, w])],
            [helper.make_tensor_value_info(out_name, out_elem, ["batch", None])],
            [initializers[n] for n in sorted(used & set(initializers))],
        ),
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
    )
    graphs = {"head": head.SerializeToString()}
    if with_features:
        del graph.value_info[:]  # stale fixed batch sizes; ONNX Runtime infers them again
        for value in list(graph.input) + list(graph.output):
            dims = value.type.tensor_type.shape.dim
            if len(dims):
                dims[0].Clear()
                dims[0].dim_param = "batch"
        present = {o.name for o in graph.output}
        if out_name not in present:
            graph.output.append(helper.make_tensor_value_info(out_name, out_elem, ["batch", None]))
        graph.output.append(helper.make_tensor_value_info(spec.feature, elem, ["batch", c, h, w]))
        graphs["features"] = model.SerializeToString()
    return graphs


def _identity_aliases(graph: Any, name: str) -> set[str]:
    """``name`` and every tensor that equals it through Identity nodes (either way)."""
    out = {name}
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node.op_type == "Identity" and len(node.input) == 1 and len(node.output) == 1:
                a, b = node.input[0], node.output[0]
                if (a in out) != (b in out):
                    out |= {a, b}
                    changed = True
    return out


def _tensor_types(model: Any, names: set[str]) -> dict[str, tuple[int, list[int | None]]]:
    """(element type, dims; ``None`` for a symbolic dim) of tensors ``names``, from the graph and shape inference."""
    import onnx

    found: dict[str, tuple[int, list[int | None]]] = {}
    values = list(model.graph.output)
    try:
        values += list(onnx.shape_inference.infer_shapes(model).graph.value_info)
    except Exception:  # pragma: no cover - exotic graphs: types default below
        values += list(model.graph.value_info)
    for v in values:
        t = v.type.tensor_type
        if v.name in names and v.name not in found and t.elem_type:
            dims = [int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim]
            found[v.name] = (int(t.elem_type), dims)
    return found


def _build(embedder: Any) -> Decomposer:
    from .model_files import resolve_model_path

    card: ModelCard = embedder.card
    spec = explain_spec(card)
    path = resolve_model_path(card)
    if path.suffix != ".onnx":
        raise _unavailable(card, f"{path.name} is not an ONNX file (the decomposition reads the ONNX graph)")
    session: Any = getattr(embedder, "session", None)
    if not all(hasattr(session, a) for a in ("get_outputs", "get_providers", "get_session_options")):
        raise _unavailable(card, "the embedder does not run on ONNX Runtime (the decomposition reads the ONNX graph)")
    outputs = [o.name for o in session.get_outputs()]
    embedding_output = spec.embedding_output or outputs[0]
    reuse = spec.feature in outputs and embedding_output in outputs
    key = _cache_key(card, spec, with_features=not reuse)
    graphs = _read_cached(key)
    if graphs is None:
        graphs = build_graphs(path, card, spec, with_features=not reuse)
        _write_cached(key, graphs)
    else:
        logger.debug("explain graphs of %s from the cache (%s)", card.id, key)
    providers = session.get_providers()
    threads = session.get_session_options().intra_op_num_threads or None
    try:
        head = create_session(graphs["head"], providers=providers, threads=threads)
        features = session if reuse else create_session(graphs["features"], providers=providers, threads=threads)
    except FacematchError as exc:
        raise _unavailable(card, f"the derived graphs do not load ({exc.message})") from exc
    logger.info("explain graphs of %s ready (%s)", card.id, "own outputs" if reuse else "feature output added")
    return Decomposer(card, spec, features, head, embedding_output)


_decomposers: weakref.WeakKeyDictionary[Any, Decomposer | ExplanationUnavailableError] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def decomposer_for(embedder: Any) -> Decomposer:
    """The :class:`Decomposer` of an ``ArcFaceEmbedder``, built on first use and kept while it lives.

    A refusal is remembered too, so a model without a decomposition does not rebuild on every call.
    """
    with _lock:
        found = _decomposers.get(embedder)
        if found is None:
            try:
                found = _build(embedder)
            except ExplanationUnavailableError as exc:
                found = exc
            _decomposers[embedder] = found
    if isinstance(found, ExplanationUnavailableError):
        raise ExplanationUnavailableError(found.message, **found.details)
    return found


__all__ = ["GRAPH_VERSION", "Decomposer", "Decomposition", "build_graphs", "decomposer_for", "explain_spec"]
