"""SCRFD decoding on synthetic outputs through an injected fake session (no weights needed)."""

from __future__ import annotations

import numpy as np
import pytest

from facematch.errors import InvalidArgumentError
from facematch.model_files import load_card
from facematch.zoo.scrfd import SCRFD, anchor_centers, choose_input_size, distance_to_box, nms


def test_anchor_centers_layout() -> None:
    c = anchor_centers(2, 3, 8, 2)
    assert c.shape == (12, 2)
    # row-major over (y, x), two anchors per location
    assert c[:6].tolist() == [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0]]
    assert c[6].tolist() == [0, 8]


def test_distance_to_box() -> None:
    b = distance_to_box(np.array([[50.0, 40.0]]), np.array([[10.0, 5.0, 20.0, 15.0]]))
    assert b.tolist() == [[40.0, 35.0, 70.0, 55.0]]


def test_nms_keeps_best_of_overlaps() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.95, 0.5, 0.1], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).tolist() == []


def test_input_size_follows_the_image() -> None:
    spec = load_card("scrfd_500m_bnkps").detection
    assert spec is not None
    assert choose_input_size(112, 112, spec) == (160, 160)  # tight crops are not blown up to 640
    assert choose_input_size(1000, 1000, spec) == (640, 640)
    w, h = choose_input_size(1200, 600, spec)
    assert (w, h) == (640, 320)
    assert choose_input_size(1000, 1000, spec, 320) == (320, 320)


class FakeSession:
    """Returns SCRFD-shaped outputs with one confident anchor per call."""

    class _Inp:
        name = "input.1"

    def __init__(self, stride: int, cell: tuple[int, int], dist: list[float], kps: list[float]) -> None:
        self.stride, self.cell, self.dist, self.kps = stride, cell, dist, kps
        self.seen: tuple[int, ...] | None = None

    def get_inputs(self) -> list[_Inp]:
        return [self._Inp()]

    def run(self, _names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        blob = feeds["input.1"]
        self.seen = blob.shape
        h, w = blob.shape[2:]
        scores, boxes, kpss = [], [], []
        for s in (8, 16, 32):
            n = (h // s) * (w // s) * 2
            sc, bx, kp = np.zeros((n, 1), np.float32), np.zeros((n, 4), np.float32), np.zeros((n, 10), np.float32)
            if s == self.stride:
                cx, cy = self.cell
                i = (cy * (w // s) + cx) * 2 + 1  # second anchor of that cell
                sc[i] = 0.9
                bx[i] = np.array(self.dist) / s
                kp[i] = np.array(self.kps) / s
            scores.append(sc)
            boxes.append(bx)
            kpss.append(kp)
        return scores + boxes + kpss


def test_decode_maps_back_to_image_coordinates() -> None:
    card = load_card("scrfd_500m_bnkps")
    # image 1280x640 -> input 640x320, scale 0.5; anchor at cell (10, 5) of stride 16 = (160, 80) in input pixels
    sess = FakeSession(16, (10, 5), [32, 16, 48, 64], [-10, -10, 10, -10, 0, 0, -8, 12, 8, 12])
    det = SCRFD(sess, card)
    faces = det.detect(np.zeros((640, 1280, 3), np.uint8))
    assert sess.seen == (1, 3, 320, 640)
    assert len(faces) == 1
    f = faces[0]
    assert f.score == pytest.approx(0.9)
    assert np.allclose(f.box, [(160 - 32) * 2, (80 - 16) * 2, (160 + 48) * 2, (80 + 64) * 2])
    assert np.allclose(f.landmarks[0], [(160 - 10) * 2, (80 - 10) * 2])
    assert np.allclose(f.landmarks[4], [(160 + 8) * 2, (80 + 12) * 2])


def test_no_detection_keeps_shape_and_bad_args_are_typed() -> None:
    card = load_card("scrfd_500m_bnkps")
    det = SCRFD(FakeSession(8, (0, 0), [0, 0, 0, 0], [0] * 10), card)
    empty = det.detect(np.zeros((100, 100, 3), np.uint8), score_threshold=0.95)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.landmarks.shape == (0, 5, 2)
    assert empty.largest() is None
    with pytest.raises(InvalidArgumentError):
        det.detect(np.zeros((100, 100, 3), np.uint8), input_size=(100, 100))
    with pytest.raises(InvalidArgumentError):
        det.detect(np.zeros((100, 100, 3), np.uint8), score_threshold=1.5)
    with pytest.raises(InvalidArgumentError):
        SCRFD(FakeSession(8, (0, 0), [0] * 4, [0] * 10), load_card("w600k_mbf"))
