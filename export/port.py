"""Port the weights of an exported ONNX graph back into a PyTorch backbone (by graph structure).

An ONNX export usually has every BatchNorm2d folded into the convolution before it (weight and
bias rescaled). The port walks the ONNX ``Conv``/``PRelu`` nodes in execution order and the
model's ``Conv2d``/``PReLU`` modules in forward (registration) order, checks that each pair has the
same weight shape, stride, padding and groups, then copies:

- the fused conv weight into ``conv.weight`` and the fused bias into the following BatchNorm2d as
  an identity normalisation (``weight=1, bias=b, running_mean=0, running_var=1-eps``), so the
  arcface_torch layout (conv without bias + BN) computes exactly the fused conv;
- PReLU slopes (ONNX ``(C,1,1)`` → torch ``(C,)``);
- the final ``Gemm`` into the last ``nn.Linear`` and a final ``BatchNormalization`` into the last
  BatchNorm1d.

This is how the test suite proves the MobileFaceNet definition and the checkpoint loader on a
real trained model (``w600k_mbf.onnx``), for which no PyTorch checkpoint is available offline.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from facematch.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_bn_pairs(model: Any) -> list[tuple[Any, Any | None]]:
    """(Conv2d, BatchNorm2d following it in the same container or None) in registration order."""
    from torch import nn

    following: dict[int, Any] = {}
    for mod in model.modules():
        children = list(mod.children())
        for cur, nxt in itertools.pairwise(children):
            if isinstance(cur, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
                following[id(cur)] = nxt
    return [(m, following.get(id(m))) for m in model.modules() if isinstance(m, nn.Conv2d)]


def port_onnx_weights(onnx_path: str | Path, model: Any) -> dict[str, Any]:
    """A state_dict for ``model`` holding the weights of the (BN-fused) ONNX graph at ``onnx_path``.

    Raises :class:`InvalidArgumentError` when the graph's structure does not match the model.
    """
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    prelus = [n for n in graph.node if n.op_type == "PRelu"]
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    bns = [n for n in graph.node if n.op_type == "BatchNormalization"]
    pairs = _conv_bn_pairs(model)
    t_prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    t_linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    t_bn1d = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    if len(convs) != len(pairs) or len(prelus) != len(t_prelus):
        raise InvalidArgumentError(
            f"graph has {len(convs)} Conv / {len(prelus)} PRelu nodes, the model {len(pairs)} Conv2d / "
            f"{len(t_prelus)} PReLU modules: not the same architecture"
        )
    with torch.no_grad():
        for idx, (node, (conv, bn)) in enumerate(zip(convs, pairs, strict=True)):
            w = inits[node.input[1]]
            a = _attrs(node)
            pads = list(a.get("pads", [0, 0, 0, 0]))
            want = (
                tuple(conv.weight.shape),
                tuple(conv.stride),
                int(conv.groups),
                [conv.padding[0], conv.padding[1]] * 2,
            )
            got = (tuple(w.shape), tuple(a.get("strides", [1, 1])), int(a.get("group", 1)), pads)
            if want != got:
                raise InvalidArgumentError(f"Conv #{idx} ({node.name or node.output[0]}): graph {got} vs model {want}")
            conv.weight.copy_(torch.from_numpy(w.copy()))
            bias = inits[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
            if conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(bias.copy()))
                if bn is not None:
                    _identity_bn(bn, np.zeros_like(bias))
            elif bn is not None:
                _identity_bn(bn, bias)
            elif np.any(bias):
                raise InvalidArgumentError(f"Conv #{idx} has a bias but the model has nowhere to put it")
        for node, prelu in zip(prelus, t_prelus, strict=True):
            slope = inits[node.input[1]].reshape(-1)
            if slope.shape != tuple(prelu.weight.shape):
                raise InvalidArgumentError(f"PRelu {node.name}: {slope.shape} vs model {tuple(prelu.weight.shape)}")
            prelu.weight.copy_(torch.from_numpy(slope.copy()))
        if gemms:
            _copy_gemm(gemms[-1], inits, t_linears)
        if bns:
            _copy_bn1d(bns[-1], inits, t_bn1d)
    logger.info("ported %d convs, %d PReLUs from %s", len(convs), len(prelus), onnx_path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _identity_bn(bn: Any, bias: np.ndarray) -> None:
    import torch

    bn.weight.fill_(1.0)
    bn.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x


def _copy_gemm(node: Any, inits: dict[str, np.ndarray], linears: list[Any]) -> None:
    import torch

    if not linears:
        raise InvalidArgumentError("graph has a Gemm but the model no nn.Linear")
    lin = linears[-1]
    a = _attrs(node)
    w = inits[node.input[1]]
    if not a.get("transB", 0):
        w = w.T
    if tuple(w.shape) != tuple(lin.weight.shape):
        raise InvalidArgumentError(f"Gemm weight {w.shape} vs model Linear {tuple(lin.weight.shape)}")
    lin.weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32, copy=True)))
    if lin.bias is not None:
        b = inits[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
        lin.bias.copy_(torch.from_numpy(b.copy()))


def _copy_bn1d(node: Any, inits: dict[str, np.ndarray], bns: list[Any]) -> None:
    import torch

    if not bns:
        raise InvalidArgumentError("graph has a BatchNormalization but the model no BatchNorm1d")
    bn = bns[-1]
    scale, bias, mean, var = (inits[i] for i in node.input[1:5])
    if scale.shape != tuple(bn.weight.shape):
        raise InvalidArgumentError(f"BatchNormalization {scale.shape} vs model {tuple(bn.weight.shape)}")
    eps = _attrs(node).get("epsilon", 1e-5)
    if abs(float(eps) - bn.eps) > 1e-9:
        bn.eps = float(eps)
    for dst, src in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var)):
        dst.copy_(torch.from_numpy(src.copy()))


__all__ = ["port_onnx_weights"]
