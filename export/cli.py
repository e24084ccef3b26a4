"""``facematch export ...``: checkpoints → ONNX (fp32/fp16/int8) → TensorRT, each checked numerically.

A typer sub-app; torch, onnxruntime and tensorrt are imported inside the commands only.
Errors are reported by the command line's group in its one style (``facematch._cliutil``):
exit status 0 on success, 1 when an export fails (a check below its bar, a missing package),
2 for bad options or inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from facematch._cliutil import check_failed, new_app

if TYPE_CHECKING:
    from .onnx_export import ExportResult
    from .validate import ValidationReport

export_app = new_app(
    "Export trained face-embedding checkpoints to ONNX / fp16 / int8 / TensorRT, each checked against its source."
)

IMAGES_ENV = "FACEMATCH_EXPORT_IMAGES"
ImagesOpt = Annotated[
    Path | None,
    typer.Option(
        "--images",
        envvar=IMAGES_ENV,
        help="Folder of aligned 112x112 faces (one subfolder per identity for TAR) to check the export on "
        "[default: the faces in the photos shipped with the model pack].",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Write the artifact even when its check fails.")]
CardOpt = Annotated[str | None, typer.Option("--card", help="Card of the input model when it carries none.")]
IdOpt = Annotated[str | None, typer.Option("--id", help="Card id of the output (default: the file stem).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (errors too).")]


def _channels(text: str, what: str) -> tuple[float, float, float]:
    """``"127.5"`` or ``"123.7,116.3,103.5"`` → three per-channel values (in the card's colour order)."""
    from facematch.errors import InvalidArgumentError

    bad = f"--{what} takes one number or three comma-separated numbers, got {text!r}"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidArgumentError(bad) from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(abs(v) < 1e6 for v in values):  # also refuses nan and inf
        raise InvalidArgumentError(bad)
    if what == "std" and not all(v > 0 for v in values):
        raise InvalidArgumentError(f"--std must be positive, got {text!r}")
    return values[0], values[1], values[2]


def _faces(images: Path | None, size: int = 112) -> Any:
    """The aligned faces to check an export on: ``--images``, else the faces in the model pack's photos."""
    if images is None:
        from .faces import pack_faces

        return pack_faces((size, size))
    from .faces import load_faces

    return load_faces(images, (size, size))


def _report(result: ExportResult, as_json: bool) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "path": str(result.path),
                    "card": json.loads(result.card.to_json()),
                    "validation": result.report.to_dict(),
                },
                indent=2,
            )
        )
        return
    typer.echo(f"wrote {result.path} (card {result.card.id}, {result.card.precision})")
    typer.echo(result.report.summary())
    if not result.report.passed:
        typer.echo("warning: the check FAILED; written because of --force", err=True)


@export_app.command("formats")
def formats_cmd() -> None:
    """Print the table of export formats and the options each supports."""
    from .formats import format_table

    typer.echo(format_table())


@export_app.command("onnx")
def onnx_cmd(
    arch: Annotated[str, typer.Option(help="r18/r34/r50/r100/r200, mbf, mbf_large, mbf_fc, sfnet20/36/64[_bn].")],
    checkpoint: Annotated[Path, typer.Option(help="PyTorch checkpoint (state_dict or a common wrapper).")],
    out: Annotated[Path, typer.Option(help="Output .onnx path (its card is written beside it).")],
    input_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 112,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    batch: Annotated[str, typer.Option(help="'dynamic' or a fixed batch size N.")] = "dynamic",
    normalize: Annotated[bool, typer.Option("--normalize/--no-normalize", help="Append L2 normalisation.")] = False,
    with_norm: Annotated[
        bool, typer.Option("--with-norm", help="Second output 'norm': the feature norm before normalisation.")
    ] = False,
    images: ImagesOpt = None,
    force: ForceOpt = False,
    card_id: IdOpt = None,
    key: Annotated[str | None, typer.Option(help="Checkpoint key holding the state_dict.")] = None,
    ema: Annotated[bool, typer.Option("--ema", help="Prefer EMA weights when the checkpoint has them.")] = False,
    color_order: Annotated[
        str, typer.Option("--color-order", help="Channel order the model was trained on: RGB or BGR.")
    ] = "RGB",
    mean: Annotated[str, typer.Option(help="Pixel mean: one value or three (per channel, in that order).")] = "127.5",
    std: Annotated[str, typer.Option(help="Pixel std: input = (pixel - mean) / std.")] = "127.5",
    as_json: JsonOpt = False,
) -> None:
    """Export a checkpoint to ONNX and check it against PyTorch (min cosine >= 0.9999).

    The defaults (RGB, (x - 127.5) / 127.5) are what arcface_torch and opensphere train with;
    set --color-order/--mean/--std for checkpoints trained otherwise: they go into the card,
    which the SDK follows.
    """
    from facematch.cards import InputSpec
    from facematch.errors import InvalidArgumentError

    from .onnx_export import export_onnx

    if color_order not in ("RGB", "BGR"):
        raise InvalidArgumentError(f"--color-order must be RGB or BGR, got {color_order!r}")
    spec = InputSpec(color_order=color_order, mean=_channels(mean, "mean"), std=_channels(std, "std"))  # type: ignore[arg-type]

    res = export_onnx(
        arch,
        checkpoint,
        out,
        input_size=input_size,
        opset=opset,
        batch=batch,
        normalize=normalize,
        with_norm=with_norm,
        faces=_faces(images, input_size),
        force=force,
        card_id=card_id,
        key=key,
        prefer_ema=ema,
        input_spec=spec,
    )
    _report(res, as_json)


@export_app.command("fp16")
def fp16_cmd(
    src: Annotated[Path, typer.Argument(help="fp32 ONNX model with a card.")],
    out: Annotated[Path, typer.Argument(help="Output .onnx path.")],
    images: ImagesOpt = None,
    force: ForceOpt = False,
    card: CardOpt = None,
    card_id: IdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert an fp32 ONNX model to fp16 and check it (min cosine >= 0.999)."""
    from .fp16 import convert_fp16

    _report(convert_fp16(src, out, faces=_faces(images), force=force, card=card, card_id=card_id), as_json)


@export_app.command("quantize")
def quantize_cmd(
    src: Annotated[Path, typer.Argument(help="fp32 ONNX model with a card.")],
    out: Annotated[Path, typer.Argument(help="Output .onnx path.")],
    calib: Annotated[Path, typer.Option(help="Folder of aligned faces to calibrate activation ranges on.")],
    calib_count: Annotated[int, typer.Option(help="Faces used for calibration (spread over the folder).")] = 200,
    method: Annotated[str, typer.Option(help="Range calibration: percentile, minmax or entropy.")] = "percentile",
    percentile: Annotated[float, typer.Option(help="Histogram percentile for --method percentile.")] = 99.999,
    keep_float: Annotated[str, typer.Option(help="'sensitive' keeps fragile nodes in float; 'none'.")] = "sensitive",
    images: ImagesOpt = None,
    force: ForceOpt = False,
    card: CardOpt = None,
    card_id: IdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Static int8 quantisation (ONNX Runtime QDQ) calibrated on aligned faces, checked (min cosine >= 0.99)."""
    from .quantize import quantize_int8

    res = quantize_int8(
        src,
        out,
        calib,
        calib_count=calib_count,
        method=method,
        percentile=percentile,
        keep_float=keep_float,
        faces=_faces(images),
        force=force,
        card=card,
        card_id=card_id,
    )
    _report(res, as_json)


@export_app.command("trt")
def trt_cmd(
    src: Annotated[Path, typer.Argument(help="fp32 ONNX model with a card.")],
    out: Annotated[Path, typer.Argument(help="Output engine path (.engine); its card goes beside it.")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp16",
    min_batch: Annotated[int, typer.Option(help="Optimisation profile: smallest batch.")] = 1,
    opt_batch: Annotated[int, typer.Option(help="Optimisation profile: batch to tune for.")] = 32,
    max_batch: Annotated[int, typer.Option(help="Optimisation profile: largest batch.")] = 256,
    calib: Annotated[Path | None, typer.Option(help="Aligned faces for the int8 entropy calibrator.")] = None,
    calib_count: Annotated[int, typer.Option(help="Faces used for int8 calibration.")] = 512,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache file (default: beside the engine).")] = None,
    workspace_gib: Annotated[float, typer.Option(help="Builder workspace limit in GiB.")] = 4.0,
    images: ImagesOpt = None,
    force: ForceOpt = False,
    card: CardOpt = None,
    card_id: IdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a TensorRT engine (needs tensorrt and an NVIDIA GPU) and check it against the ONNX source."""
    from .trt import build_engine

    res = build_engine(
        src,
        out,
        precision=precision,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        calib_dir=calib,
        calib_count=calib_count,
        timing_cache=timing_cache,
        workspace_gib=workspace_gib,
        faces=_faces(images),
        force=force,
        card=card,
        card_id=card_id,
    )
    _report(res, as_json)


@export_app.command("validate")
def validate_cmd(
    reference: Annotated[Path, typer.Argument(help="Reference: ONNX model, or a checkpoint with --arch.")],
    candidate: Annotated[Path, typer.Argument(help="Candidate: ONNX model, or a checkpoint with --arch.")],
    images: Annotated[
        Path, typer.Option("--images", envvar=IMAGES_ENV, help="Aligned faces, one subfolder per identity.")
    ],
    arch: Annotated[str | None, typer.Option(help="Architecture of the checkpoint side.")] = None,
    card: CardOpt = None,
    fmr: Annotated[float, typer.Option(help="False-match rate at which TAR is compared.")] = 1e-3,
    far: Annotated[float | None, typer.Option(hidden=True, help="Deprecated alias of --fmr.")] = None,
    min_cos: Annotated[float | None, typer.Option(help="Bar (default: by the candidate's precision).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two models on real aligned faces: min/mean cosine and the TAR@FMR change. Exit 1 below the bar."""
    if far is not None:
        typer.echo("warning: --far is deprecated; use --fmr (the false-match rate)", err=True)
        fmr = far
    report = _validate(reference, candidate, images, arch=arch, card=card, fmr=fmr, min_cos=min_cos)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
    if not report.passed:
        check_failed(f"{candidate} does not reproduce {reference} within the bar (see the report above)")


def _validate(
    reference: Path,
    candidate: Path,
    images: Path,
    *,
    arch: str | None,
    card: str | None,
    fmr: float,
    min_cos: float | None,
) -> ValidationReport:
    from facematch.errors import InvalidArgumentError

    from .card import source_card
    from .checkpoint import load_backbone
    from .faces import load_faces
    from .runners import OnnxRunner, TorchRunner
    from .validate import compare

    onnx_side = [p for p in (reference, candidate) if p.suffix == ".onnx"]
    if not onnx_side:
        raise InvalidArgumentError("at least one side must be an ONNX model with a card")
    if not 0.0 < fmr < 1.0:
        raise InvalidArgumentError(f"--fmr must be in (0, 1), got {fmr}")
    cards = {p: source_card(p, card) for p in onnx_side}
    spec_card = cards[onnx_side[0]]

    def runner(p: Path) -> Any:
        if p.suffix == ".onnx":
            return OnnxRunner(p, cards[p])
        if arch is None:
            raise InvalidArgumentError(f"{p.name} is not ONNX: pass --arch to load it as a PyTorch checkpoint")
        size = spec_card.input.size[0] if spec_card.input.size else 112
        model, _ = load_backbone(arch, p, input_size=size)
        return TorchRunner(model, spec_card.input, name=str(p))

    ref, cand = runner(reference), runner(candidate)
    precision = cards[candidate].precision if candidate in cards else "fp32"
    size = spec_card.input.size or (112, 112)
    faces = load_faces(images, size)
    return compare(ref, cand, precision=precision, faces=faces, fmr=fmr, min_cos=min_cos)


__all__ = ["export_app"]
