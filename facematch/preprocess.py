"""The one step from BGR uint8 images to a model's input tensor, as a card's ``input`` block says.

Every network facematch runs is fed through :func:`to_blob`: the embedder on every batch of
aligned crops, the detector on its letterboxed canvas, the landmark model on its box crops,
and the export tools (validation, int8 calibration, TensorRT) on the faces they check an
export with. So a model is validated on exactly the input it is served.

Card convention (``facematch.cards.InputSpec``)
----------------------------------------------
* Images come in as OpenCV decodes them: BGR, uint8, ``(H, W, 3)``.
* ``color_order`` is the channel order the *network* expects. ``"RGB"`` swaps B and R,
  ``"BGR"`` keeps them.
* ``mean`` and ``std`` are given **in that same order**: for an RGB card ``mean[0]`` is the
  red mean, for a BGR card ``mean[0]`` is the blue mean. Channel ``c`` of the tensor is
  ``(pixel[c] - mean[c]) / std[c]`` where ``pixel`` is already in the card's order.
  (This is also how ``cv2.dnn.blobFromImage`` applies its ``mean``: to the output channels,
  after ``swapRB``.)
* ``layout`` ``"NCHW"`` or ``"NHWC"``; ``dtype`` ``"float32"`` or ``"float16"`` (computed in
  float32, cast at the end).

The division is done as a multiplication by ``float32(1 / std)``: for the default pack this is
bit-identical to the ``cv2.dnn.blobFromImages`` call facematch used before, and within one
float32 rounding of a plain ``(x - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .cards import InputSpec
from .errors import InvalidImageError


def _batch(images: np.ndarray | Sequence[np.ndarray], size: tuple[int, int] | None) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 with every image at ``size`` (width, height) when given."""
    if isinstance(images, np.ndarray):
        batch = images
        if batch.ndim != 4 or batch.shape[3] != 3 or batch.dtype != np.uint8:
            raise InvalidImageError(f"expected (N, H, W, 3) uint8 BGR images, got {batch.shape} {batch.dtype}")
        if size is None or batch.shape[2:0:-1] == tuple(size):
            return batch
        seq: Sequence[np.ndarray] = list(batch)
    else:
        seq = images
    if size is None and len({np.shape(im) for im in seq}) > 1:
        raise InvalidImageError("images of different sizes need a target size")
    out = []
    for im in seq:
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise InvalidImageError(f"expected (H, W, 3) uint8 BGR images, got {im.shape} {im.dtype}")
        if size is not None and im.shape[1::-1] != tuple(size):
            import cv2

            im = cv2.resize(im, tuple(size), interpolation=cv2.INTER_LINEAR)
        out.append(im)
    if not out:
        w, h = size if size is not None else (0, 0)
        return np.zeros((0, h, w, 3), np.uint8)
    return np.stack(out)


def to_blob(
    images: np.ndarray | Sequence[np.ndarray], spec: InputSpec, size: tuple[int, int] | None = None
) -> np.ndarray:
    """BGR uint8 images → the input tensor a card's ``spec`` describes (see the module docstring).

    ``images``: an ``(N, H, W, 3)`` array or a sequence of ``(H, W, 3)`` images. ``size``
    (width, height): the images that differ are resized (bilinear); ``None`` keeps them as
    they are. Returns a C-contiguous ``(N, 3, H, W)`` or
    ``(N, H, W, 3)`` array of the card's dtype.
    """
    x = _batch(images, size)
    n, h, w, _ = x.shape
    mean = np.asarray(spec.mean, np.float32)
    scale = (1.0 / np.asarray(spec.std, np.float64)).astype(np.float32)
    if spec.color_order == "RGB":
        x = x[..., ::-1]  # a view: output channel c is input channel 2 - c
    if spec.layout == "NCHW":
        # transposing the uint8 pixels is cheap; the float arithmetic then runs on contiguous planes
        planar = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out = np.subtract(planar, mean[None, :, None, None], dtype=np.float32)
        out *= scale[None, :, None, None]
    else:
        out = np.empty((n, h, w, 3), np.float32)
        for c in range(3):  # per channel: numpy broadcasts a length-3 innermost axis slowly
            plane = out[..., c]
            np.subtract(x[..., c], mean[c], out=plane, dtype=np.float32)
            plane *= scale[c]
    return out.astype(np.float16) if spec.dtype == "float16" else out


__all__ = ["to_blob"]
