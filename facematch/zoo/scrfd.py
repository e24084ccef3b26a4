"""SCRFD face detector wrapper (session injected; decoding is plain numpy)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..cards import DetectionSpec, ModelCard
from ..errors import InvalidArgumentError
from ..preprocess import to_blob
from ..types import Detections


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """(height*width*num_anchors, 2) anchor centres (x, y) in input pixels, row-major, anchors innermost."""
    ys, xs = np.mgrid[:height, :width]
    centers = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
    if num_anchors > 1:
        centers = np.repeat(centers, num_anchors, axis=0)
    return centers


def distance_to_box(centers: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) from centres and (left, top, right, bottom) distances."""
    return np.concatenate([centers - distances[:, 0:2], centers + distances[:, 2:4]], axis=1)


def distance_to_points(centers: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, K, 2) keypoints from centres and (N, 2K) offsets."""
    return centers[:, None, :] + offsets.reshape(len(offsets), -1, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices in descending score order."""
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def choose_input_size(width: int, height: int, spec: DetectionSpec, target: int | None = None) -> tuple[int, int]:
    """Detector input (width, height) for an image: keep the aspect ratio, never upscale past need.

    The long side becomes ``target`` (default: the image's own long side clamped to
    ``[min_input, max_input]``), rounded up to ``input_multiple``. A tight 112×112
    face crop thus runs at 160×160 rather than being blown up to 640, where SCRFD's
    anchors no longer fit a face that fills the frame.
    """
    m = spec.input_multiple
    long_side = max(width, height)
    side = target if target is not None else min(max(long_side, spec.min_input), spec.max_input)
    side = max(m, int(math.ceil(side / m) * m))
    scale = side / long_side
    w = max(m, int(math.ceil(width * scale / m) * m))
    h = max(m, int(math.ceil(height * scale / m) * m))
    return w, h


class SCRFD:
    """SCRFD detector: letterbox, run, decode per stride, NMS. Returns faces in image pixels."""

    def __init__(self, session: Any, card: ModelCard) -> None:
        if card.task != "detection" or card.detection is None:
            raise InvalidArgumentError(f"card {card.id!r} is not a detection card")
        self.session = session
        self.card = card
        self.spec: DetectionSpec = card.detection
        self._input_name = session.get_inputs()[0].name
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}

    def letterbox(self, image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
        """Resize (keeping aspect) into the top-left of a black ``input_size`` canvas; returns it and the scale."""
        import cv2

        w_in, h_in = input_size
        h, w = image.shape[:2]
        scale = min(w_in / w, h_in / h)
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.zeros((h_in, w_in, 3), dtype=np.uint8)
        canvas[:nh, :nw] = resized
        return canvas, scale

    def _anchor_centers(self, h: int, w: int, stride: int) -> np.ndarray:
        key = (h, w, stride)
        if key not in self._centers:
            self._centers[key] = anchor_centers(h, w, stride, self.spec.anchors_per_location)
        return self._centers[key]

    def decode(
        self, outputs: list[np.ndarray], input_size: tuple[int, int], score_threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode raw outputs of one image into (boxes, scores, landmarks) in input pixels."""
        spec = self.spec
        w_in, h_in = input_size
        all_boxes, all_scores, all_kps = [], [], []
        for i, stride in enumerate(spec.strides):
            scores = outputs[spec.score_outputs[i]].reshape(-1)
            dist = outputs[spec.box_outputs[i]].reshape(-1, 4) * stride
            centers = self._anchor_centers(h_in // stride, w_in // stride, stride)
            if len(centers) != len(scores):
                raise InvalidArgumentError(
                    f"stride {stride}: {len(scores)} scores for {len(centers)} anchors; the card does not fit the model"
                )
            keep = np.nonzero(scores >= score_threshold)[0]
            if keep.size == 0:
                continue
            all_scores.append(scores[keep])
            all_boxes.append(distance_to_box(centers[keep], dist[keep]))
            if spec.landmark_outputs is not None:
                offs = outputs[spec.landmark_outputs[i]].reshape(len(centers), -1)[keep] * stride
                all_kps.append(distance_to_points(centers[keep], offs))
        k = spec.num_landmarks
        if not all_scores:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, k, 2), np.float32)
        boxes = np.concatenate(all_boxes).astype(np.float32)
        scores_ = np.concatenate(all_scores).astype(np.float32)
        kps = np.concatenate(all_kps).astype(np.float32) if all_kps else np.zeros((len(boxes), k, 2), np.float32)
        return boxes, scores_, kps

    def detect(
        self,
        image: np.ndarray,
        *,
        input_size: int | tuple[int, int] | None = None,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
        max_faces: int | None = None,
    ) -> Detections:
        """Detect faces in a BGR uint8 image; boxes and 5 landmarks in that image's pixels.

        ``input_size``: an int sets the long side of the detector input (aspect kept),
        a ``(w, h)`` pair sets it exactly (multiples of 32); ``None`` picks it from the image.
        """
        h, w = image.shape[:2]
        if isinstance(input_size, tuple):
            size = (int(input_size[0]), int(input_size[1]))
            m = self.spec.input_multiple
            if size[0] % m or size[1] % m or min(size) <= 0:
                raise InvalidArgumentError(f"detector input size must be positive multiples of {m}, got {size}")
        else:
            size = choose_input_size(w, h, self.spec, input_size)
        thr = self.spec.score_threshold if score_threshold is None else float(score_threshold)
        nms_thr = self.spec.nms_threshold if nms_threshold is None else float(nms_threshold)
        if not (0.0 <= thr <= 1.0 and 0.0 <= nms_thr <= 1.0):
            raise InvalidArgumentError("score and NMS thresholds must be in [0, 1]")
        canvas, scale = self.letterbox(image, size)
        outputs = self.session.run(None, {self._input_name: to_blob(canvas[None], self.card.input)})
        boxes, scores, kps = self.decode(outputs, size, thr)
        if len(boxes) == 0:
            return Detections.empty()
        keep = nms(boxes, scores, nms_thr)
        if max_faces is not None:
            keep = keep[:max_faces]
        boxes, scores, kps = boxes[keep] / scale, scores[keep], kps[keep] / scale
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
        if kps.shape[1] != 5:
            raise InvalidArgumentError("facematch aligns with 5 landmarks; this detector card declares another count")
        return Detections(boxes=boxes, scores=scores, landmarks=kps)


__all__ = ["SCRFD", "anchor_centers", "choose_input_size", "distance_to_box", "distance_to_points", "nms"]
