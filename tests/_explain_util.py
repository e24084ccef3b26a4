"""A tiny embedding model built with ``onnx.helper`` whose decomposition is known in closed form.

Backbone: one 16×16 convolution with stride 16 (3 → C channels) and a ReLU, so feature cell
``(y, x)`` of the 7×7 map depends only on crop pixels ``[16y, 16y+16) × [16x, 16x+16)``.
Head: Flatten → Gemm (C·49 → D), affine; or the same followed by Tanh (not affine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

C, D, GRID, CELL, SIZE = 4, 8, 7, 16, 112


@dataclass(frozen=True)
class ToyModel:
    path: Path
    card: Path
    w1: np.ndarray  # (C, 3, 16, 16)
    b1: np.ndarray  # (C,)
    w2: np.ndarray  # (D, C*49)
    b2: np.ndarray  # (D,)
    head: str

    def features(self, blob: np.ndarray) -> np.ndarray:
        """(N, C, 7, 7): ReLU(conv) of a preprocessed (N, 3, 112, 112) blob, in float64."""
        x = blob.astype(np.float64).reshape(len(blob), 3, GRID, CELL, GRID, CELL)
        f = np.einsum("nkyixj,ckij->ncyx", x, self.w1.astype(np.float64)) + self.b1[None, :, None, None]
        return np.maximum(f, 0.0)

    def embed_raw(self, feats: np.ndarray) -> np.ndarray:
        lin = feats.reshape(len(feats), -1) @ self.w2.T.astype(np.float64) + self.b2
        return np.tanh(lin) if self.head == "tanh" else lin

    def terms(self, feats: np.ndarray) -> np.ndarray:
        """(N, 49, D): the head's term ``A_p F_p`` of each position (affine head)."""
        w = self.w2.astype(np.float64).reshape(D, C, GRID * GRID)  # Flatten order: c * 49 + p
        return np.einsum("dcp,ncp->npd", w, feats.reshape(len(feats), C, GRID * GRID))


def build_toy(folder: Path, name: str, *, head: str = "affine", explain: dict | str | None = "default", seed: int = 0):  # type: ignore[no-untyped-def]
    """Write ``<name>.onnx`` and its sidecar card; ``explain=None`` leaves the card's block out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from facematch.model_files import file_sha256

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 0.02, (C, 3, CELL, CELL)).astype(np.float32)
    b1 = rng.uniform(0.05, 0.2, C).astype(np.float32)
    w2 = rng.normal(0.0, 0.5 if head == "tanh" else 0.1, (D, C * GRID * GRID)).astype(np.float32)
    b2 = rng.normal(0.0, 0.3, D).astype(np.float32)
    lin = "emb" if head == "affine" else "lin"
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("Flatten", ["feat"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w2", "b2"], [lin], transB=1),
    ]
    if head == "tanh":
        nodes.append(helper.make_node("Tanh", ["lin"], ["emb"]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", D])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    card: dict = {
        "schema_version": 1,
        "id": name,
        "task": "embedding",
        "file": path.name,
        "sha256": file_sha256(path),
        "license": {"name": "test", "commercial_use": False},
        "input": {
            "size": [SIZE, SIZE],
            "color_order": "RGB",
            "mean": [127.5, 127.5, 127.5],
            "std": [127.5, 127.5, 127.5],
        },
        "alignment_template": "arcface_112",
        "embedding": {"dim": D, "normalized_output": False},
    }
    if explain == "default":
        card["explain"] = {"feature": "feat", "feature_shape": [C, GRID, GRID], "head": f"Flatten -> Gemm ({head})"}
    elif explain is not None:
        card["explain"] = explain
    card_path = folder / f"{name}.card.json"
    card_path.write_text(json.dumps(card, indent=2), encoding="utf-8")
    return ToyModel(path, card_path, w1, b1, w2, b2, head)
