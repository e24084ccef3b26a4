"""The one preprocessing step (``facematch.preprocess.to_blob``) and every network fed through it.

Each check compares with :func:`reference_blob`, the card's convention written out plainly in
float64: BGR pixels, reordered to the card's colour order, minus the card's mean, over the card's
std (both given in the card's colour order), in the card's layout and dtype. The wrappers are
checked on what they actually feed their ONNX session (a recording stand-in for the session),
and export validation and the SDK on the same exported model (a real ONNX file and card).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from facematch.cards import InputSpec, ModelCard
from facematch.errors import InvalidImageError
from facematch.model_files import load_card
from facematch.preprocess import to_blob
from facematch.types import Face
from facematch.zoo.arcface import ArcFaceEmbedder
from facematch.zoo.landmarks import Landmarks106, box_crop_matrix
from facematch.zoo.scrfd import SCRFD

# (colour order, mean, std), mean/std in the card's colour order
CONVENTIONS: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "bgr_per_channel": ("BGR", (104.0, 117.0, 123.0), (58.0, 57.0, 57.0)),
    "bgr_mean_uniform_std": ("BGR", (104.0, 117.0, 123.0), (128.0, 128.0, 128.0)),
    "rgb_per_channel": ("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "default_pack": ("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
}


def spec_for(name: str, **extra: Any) -> InputSpec:
    order, mean, std = CONVENTIONS[name]
    return InputSpec(color_order=order, mean=mean, std=std, **extra)  # type: ignore[arg-type]


def reference_blob(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The card's preprocessing, plainly: float64 arithmetic, one explicit step at a time."""
    x = np.asarray(images, dtype=np.float64)  # (N, H, W, 3), channels B, G, R
    if spec.color_order == "RGB":
        x = np.stack([x[..., 2], x[..., 1], x[..., 0]], axis=-1)
    x = (x - np.array(spec.mean, dtype=np.float64)) / np.array(spec.std, dtype=np.float64)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return x.astype(np.float16 if spec.dtype == "float16" else np.float32)


def assert_blob(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    # float32: within a rounding or two of the float64 reference; float16: within one fp16 step
    tol = dict(rtol=2e-3, atol=2e-3) if got.dtype == np.float16 else dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), **tol)  # type: ignore[arg-type]


def bgr_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


class RecordingSession:
    """Stands in for an ONNX Runtime session: records every input blob and answers with ``outputs(blob)``."""

    def __init__(self, outputs: Any) -> None:
        self.outputs = outputs
        self.fed: list[np.ndarray] = []

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="input")]

    def run(self, _names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        blob = feeds["input"]
        self.fed.append(blob.copy())
        return list(self.outputs(blob))


def with_input(card: ModelCard, spec: InputSpec) -> ModelCard:
    return card.model_copy(update={"input": spec})


# ---- to_blob ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_to_blob_matches_the_plain_reference(name: str, layout: str, dtype: str) -> None:
    spec = spec_for(name, layout=layout, dtype=dtype)
    x = bgr_images(5, 24, 20)
    got = to_blob(x, spec)
    assert got.flags["C_CONTIGUOUS"]
    assert_blob(got, reference_blob(x, spec))
    assert np.array_equal(to_blob(list(x), spec), got)  # a list of images is the same batch


def test_bgr_card_mean_and_std_are_in_bgr_order() -> None:
    """Spelled out on one pixel: channel 0 of a BGR card is blue, minus mean[0], over std[0]."""
    px = np.array([[[[10, 20, 30]]]], np.uint8)  # B=10, G=20, R=30
    got = to_blob(px, spec_for("bgr_per_channel"))[0, :, 0, 0]
    np.testing.assert_allclose(got, [(10 - 104) / 58, (20 - 117) / 57, (30 - 123) / 57], rtol=1e-6)
    got = to_blob(px, spec_for("rgb_per_channel"))[0, :, 0, 0]
    np.testing.assert_allclose(got, [(30 - 123.675) / 58.395, (20 - 116.28) / 57.12, (10 - 103.53) / 57.375], rtol=1e-6)


def test_layouts_hold_the_same_numbers() -> None:
    spec = spec_for("rgb_per_channel")
    x = bgr_images(3, 16, 16)
    nchw = to_blob(x, spec)
    nhwc = to_blob(x, spec.model_copy(update={"layout": "NHWC"}))
    assert np.array_equal(nchw.transpose(0, 2, 3, 1), nhwc)


def test_resize_only_when_the_size_differs() -> None:
    spec = spec_for("bgr_per_channel")
    x = bgr_images(2, 90, 100)
    resized = np.stack([cv2.resize(im, (112, 112), interpolation=cv2.INTER_LINEAR) for im in x])
    assert_blob(to_blob(x, spec, (112, 112)), reference_blob(resized, spec))
    assert np.array_equal(to_blob(x, spec, (100, 90)), to_blob(x, spec))  # same size: untouched
    mixed = [x[0], resized[1]]  # images of different sizes are fine with a target size
    assert_blob(to_blob(mixed, spec, (112, 112)), reference_blob(resized, spec))


def test_bad_images_are_typed_errors_and_empty_keeps_its_shape() -> None:
    spec = spec_for("default_pack")
    with pytest.raises(InvalidImageError):
        to_blob(np.zeros((2, 8, 8, 3), np.float32), spec)
    with pytest.raises(InvalidImageError):
        to_blob(np.zeros((2, 8, 8), np.uint8), spec)
    with pytest.raises(InvalidImageError):
        to_blob([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], spec)
    assert to_blob(np.zeros((0, 112, 112, 3), np.uint8), spec).shape == (0, 3, 112, 112)
    assert to_blob([], spec, (112, 96)).shape == (0, 3, 96, 112)


# ---- what each wrapper feeds its session ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_embedder_feeds_the_reference_blob(name: str, layout: str) -> None:
    spec = spec_for(name, size=(112, 112), layout=layout)
    card = with_input(load_card("w600k_mbf"), spec)
    sess = RecordingSession(lambda blob: [np.ones((len(blob), 512), np.float32)])
    crops = bgr_images(5, 112, 112, seed=1)
    ArcFaceEmbedder(sess, card, max_batch=3).embed(crops)
    assert [len(b) for b in sess.fed] == [3, 2]
    assert_blob(np.concatenate(sess.fed), reference_blob(crops, spec))


def _scrfd_outputs(card: ModelCard, w: int, h: int) -> Any:
    spec = card.detection
    assert spec is not None
    k = spec.num_landmarks

    def outputs(_blob: np.ndarray) -> list[np.ndarray]:
        outs: list[np.ndarray] = [np.zeros(0)] * (3 * len(spec.strides))
        for i, s in enumerate(spec.strides):
            n = (h // s) * (w // s) * spec.anchors_per_location
            outs[spec.score_outputs[i]] = np.zeros((n, 1), np.float32)  # no face: decoding is not under test
            outs[spec.box_outputs[i]] = np.zeros((n, 4), np.float32)
            assert spec.landmark_outputs is not None
            outs[spec.landmark_outputs[i]] = np.zeros((n, 2 * k), np.float32)
        return outs

    return outputs


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_detector_feeds_the_reference_blob(name: str, layout: str) -> None:
    spec = spec_for(name, layout=layout)
    card = with_input(load_card("scrfd_500m_bnkps"), spec)
    sess = RecordingSession(_scrfd_outputs(card, 160, 128))
    image = bgr_images(1, 128, 160, seed=2)[0]  # already the input size: the letterbox is the image itself
    SCRFD(sess, card).detect(image, input_size=(160, 128))
    assert len(sess.fed) == 1
    assert_blob(sess.fed[0], reference_blob(image[None], spec))
    # another aspect ratio: scaled by min(160 / 100, 128 / 64) = 1.6 into the top-left of a black canvas
    small = bgr_images(1, 64, 100, seed=3)[0]
    SCRFD(sess, card).detect(small, input_size=(160, 128))
    canvas = np.zeros((128, 160, 3), np.uint8)
    canvas[:102, :160] = cv2.resize(small, (160, 102), interpolation=cv2.INTER_LINEAR)
    assert_blob(sess.fed[1], reference_blob(canvas[None], spec))


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_landmarks_feed_the_reference_blob(name: str, layout: str) -> None:
    spec = spec_for(name, size=(192, 192), layout=layout)
    card = with_input(load_card("2d106det"), spec)
    sess = RecordingSession(lambda blob: [np.zeros((len(blob), 212), np.float32)])
    image = bgr_images(1, 300, 400, seed=4)[0]
    faces = [
        Face(box=np.array([50, 40, 150, 170], np.float32), score=0.9, landmarks=np.zeros((5, 2), np.float32)),
        Face(box=np.array([220, 100, 330, 230], np.float32), score=0.8, landmarks=np.zeros((5, 2), np.float32)),
    ]
    Landmarks106(sess, card).predict(image, faces)
    assert card.landmarks is not None
    crops = np.stack(
        [
            cv2.warpAffine(image, box_crop_matrix(f.box, 192, card.landmarks.box_scale), (192, 192), borderValue=0)
            for f in faces
        ]
    )
    assert len(sess.fed) == 1
    assert_blob(sess.fed[0], reference_blob(crops, spec))


# ---- the default pack is unchanged ------------------------------------------------------------------


def _celeb24_crops(celeb24_dir: Path, n: int) -> np.ndarray:
    files = sorted(celeb24_dir.glob("*/*.png"))[:: 942 // n][:n]
    return np.stack([cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files])


def test_default_pack_blobs_and_embeddings_are_unchanged(matcher: Any, celeb24_dir: Path) -> None:
    card = matcher.embedder_card
    assert (card.input.color_order, card.input.mean, card.input.std) == ("RGB", (127.5,) * 3, (127.5,) * 3)
    crops = _celeb24_crops(celeb24_dir, 12)
    blob = to_blob(crops, card.input, card.input.size)
    assert_blob(blob, reference_blob(crops, card.input))
    # bit for bit what facematch fed the default embedder before to_blob existed
    before = cv2.dnn.blobFromImages(list(crops), 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    assert np.array_equal(blob, before)
    emb, norms = matcher.embed_crops(crops)
    sess = matcher.embedder.session
    raw = sess.run(None, {sess.get_inputs()[0].name: reference_blob(crops, card.input)})[0]
    np.testing.assert_allclose(norms, np.linalg.norm(raw, axis=1), rtol=1e-5)
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    # the detector's card (RGB, 127.5 / 128) through the same step
    det = matcher.detector_card.input
    canvas = bgr_images(1, 160, 160, seed=5)
    before = cv2.dnn.blobFromImage(canvas[0], 1.0 / 128.0, (160, 160), (127.5, 127.5, 127.5), swapRB=True)
    assert np.array_equal(to_blob(canvas, det), before)
    assert_blob(to_blob(canvas, det), reference_blob(canvas, det))


# ---- export validation and the SDK feed an exported model the same blob ---------------------------


def _projection_model(path: Path, spec: InputSpec, dim: int = 16) -> Path:
    """A real ONNX embedder, Flatten → MatMul(random W), written with its card the way export writes it."""
    import onnx
    from facematch.export.card import embedding_card, write_onnx_with_card
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(7).standard_normal((3 * 112 * 112, dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["embedding"]),
        ],
        "projection",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    card = embedding_card(
        card_id=path.stem,
        file=path.name,
        arch="projection",
        input_size=112,
        dim=dim,
        normalized=False,
        norm_output_index=None,
        opset=17,
        precision="fp32",
        dynamic_batch=True,
        checkpoint_sha256=None,
        export={"tool": "tests"},
        input_spec=spec,
    )
    write_onnx_with_card(model, card, path)
    return path


class RecordingRunner:
    """An export runner that keeps what it was fed and what it returned."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.spec, self.fixed_batch = inner, inner.name, inner.spec, inner.fixed_batch
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        emb, norm = self.inner.run(x)
        self.calls.append((x.copy(), emb))
        return emb, norm


@pytest.mark.parametrize("name", ["bgr_per_channel", "bgr_mean_uniform_std"])
def test_export_validation_and_sdk_feed_an_exported_bgr_model_the_same_blob(
    tmp_path: Path, matcher: Any, celeb24_dir: Path, name: str
) -> None:
    from facematch.export.faces import FaceSet
    from facematch.export.runners import OnnxRunner
    from facematch.export.validate import compare

    from facematch import FaceMatcher

    path = _projection_model(tmp_path / "bgr_proj.onnx", spec_for(name, size=(112, 112)))
    card = load_card(path)
    assert card.input.color_order == "BGR" and card.input.mean == (104.0, 117.0, 123.0)
    crops = _celeb24_crops(celeb24_dir, 10)
    faces = FaceSet(celeb24_dir, tuple(Path(f"face{i}.png") for i in range(len(crops))), crops, None)

    reference = RecordingRunner(OnnxRunner(path, card))
    report = compare(reference, OnnxRunner(path, card), faces=faces)
    assert report.passed, report.summary()
    fed, validated = reference.calls[0]  # the first run is every face, at batch 32
    assert_blob(fed, reference_blob(crops, card.input))

    sdk = FaceMatcher(detector=matcher.detector, embedder=str(path))
    emb, norms = sdk.embed_crops(crops)
    np.testing.assert_allclose(norms, np.linalg.norm(validated, axis=1), rtol=1e-6)
    np.testing.assert_allclose(emb, validated / np.linalg.norm(validated, axis=1, keepdims=True), atol=1e-6)
