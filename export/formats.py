"""What each export format supports, and the check that rejects a bad combination of options.

A bad combination is an :class:`~facematch.errors.InvalidArgumentError` with a message saying
why; nothing is silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from facematch.errors import InvalidArgumentError

MIN_OPSET, MAX_OPSET = 11, 20  # what the TorchScript ONNX exporter of torch 2.x writes
QDQ_PER_CHANNEL_MIN_OPSET = 13


@dataclass(frozen=True)
class FormatSpec:
    """One row of the format table."""

    name: str
    command: str
    source: str
    precisions: tuple[str, ...]
    opsets: tuple[int, int] | None
    batch: str
    normalize: bool  # can append L2 normalisation
    norm_output: bool  # can add the pre-normalisation norm output
    needs_calibration: bool
    needs_gpu: bool
    min_cosine: str
    notes: str


FORMATS: dict[str, FormatSpec] = {
    "onnx": FormatSpec(
        "onnx",
        "export onnx",
        "PyTorch checkpoint + --arch",
        ("fp32",),
        (MIN_OPSET, MAX_OPSET),
        "dynamic or fixed N",
        True,
        True,
        False,
        False,
        ">= 0.9999",
        "--with-norm needs --normalize (without it the norm is just the output's length)",
    ),
    "fp16": FormatSpec(
        "fp16",
        "export fp16",
        "fp32 ONNX with a card",
        ("fp16",),
        None,
        "as the source",
        False,
        False,
        False,
        False,
        ">= 0.999",
        "weights and activations fp16, inputs/outputs stay fp32; L2 normalisation stays fp32",
    ),
    "int8": FormatSpec(
        "int8",
        "export quantize",
        "fp32 ONNX with a card",
        ("int8",),
        (QDQ_PER_CHANNEL_MIN_OPSET, MAX_OPSET),
        "as the source",
        False,
        False,
        True,
        False,
        ">= 0.99 (+ TAR@FAR change)",
        "ONNX Runtime static QDQ, per-channel weights; opset < 13 is converted first; sensitive nodes stay float",
    ),
    "trt": FormatSpec(
        "trt",
        "export trt",
        "ONNX (fp32) with a card",
        ("fp32", "fp16", "int8"),
        None,
        "optimisation profile min <= opt <= max",
        False,
        False,
        False,
        True,
        "fp32 >= 0.9999, fp16 >= 0.999, int8 >= 0.99",
        "needs the tensorrt Python package and an NVIDIA GPU; int8 needs --calib; fp16/int8 need GPU support",
    ),
}


def check_onnx_options(*, opset: int, batch: str, normalize: bool, with_norm: bool, input_size: int) -> int | None:
    """Validate ``export onnx`` options; returns the fixed batch size (None for dynamic)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InvalidArgumentError(f"--opset must be in [{MIN_OPSET}, {MAX_OPSET}] for ONNX export, got {opset}")
    if with_norm and not normalize:
        raise InvalidArgumentError(
            "--with-norm needs --normalize: the norm output is the length of the features before L2 normalisation"
        )
    if input_size <= 0 or input_size % 16:
        raise InvalidArgumentError(f"--input-size must be a positive multiple of 16, got {input_size}")
    return parse_batch(batch)


def parse_batch(batch: str) -> int | None:
    """``dynamic`` → None; a positive integer → that fixed batch size."""
    if batch.strip().lower() == "dynamic":
        return None
    try:
        n = int(batch)
    except ValueError:
        raise InvalidArgumentError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if n < 1:
        raise InvalidArgumentError(f"--batch must be >= 1, got {n}")
    return n


def check_source_precision(fmt: str, precision: str) -> None:
    """fp16 / int8 / TensorRT start from an fp32 model; converting a converted model is refused."""
    if precision != "fp32":
        raise InvalidArgumentError(
            f"{FORMATS[fmt].command} needs an fp32 source model, got a {precision} one; convert the fp32 export"
        )


def check_trt_options(
    *, precision: str, min_batch: int, opt_batch: int, max_batch: int, calib: str | None, source_batch: int | None
) -> None:
    """Validate ``export trt`` options (GPU capabilities are checked when the builder starts).

    ``source_batch`` is the source ONNX's fixed batch size, ``None`` when its batch is dynamic.
    """
    if precision not in FORMATS["trt"].precisions:
        raise InvalidArgumentError(f"--precision must be one of {FORMATS['trt'].precisions}, got {precision!r}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise InvalidArgumentError(
            f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}"
        )
    if source_batch is not None and not min_batch == opt_batch == max_batch == source_batch:
        raise InvalidArgumentError(
            f"the source ONNX has a fixed batch of {source_batch}: use --min-batch {source_batch} "
            f"--opt-batch {source_batch} --max-batch {source_batch}, or export the source with --batch dynamic"
        )
    if precision == "int8" and not calib:
        raise InvalidArgumentError("int8 TensorRT engines need --calib DIR (aligned faces for the entropy calibrator)")
    if precision != "int8" and calib:
        raise InvalidArgumentError("--calib is only used for --precision int8")


def format_table() -> str:
    """The format table as Markdown (used by ``export formats`` and the docs)."""
    head = (
        "| format | command | source | precision | opset | batch | --normalize | --with-norm "
        "| calibration | GPU | min cosine | notes |"
    )
    rows = [head, "|" + "---|" * 12]
    for f in FORMATS.values():
        opsets = f"{f.opsets[0]}-{f.opsets[1]}" if f.opsets else "as source"
        rows.append(
            f"| {f.name} | `{f.command}` | {f.source} | {'/'.join(f.precisions)} | {opsets} | {f.batch} | "
            f"{'yes' if f.normalize else 'no'} | {'yes' if f.norm_output else 'no'} | "
            f"{'required' if f.needs_calibration else ('int8 only' if f.name == 'trt' else 'no')} | "
            f"{'required' if f.needs_gpu else 'no'} | {f.min_cosine} | {f.notes} |"
        )
    return "\n".join(rows)


__all__ = [
    "FORMATS",
    "MAX_OPSET",
    "MIN_OPSET",
    "QDQ_PER_CHANNEL_MIN_OPSET",
    "FormatSpec",
    "check_onnx_options",
    "check_source_precision",
    "check_trt_options",
    "format_table",
    "parse_batch",
]
