"""``facematch explain``: why two faces are (not) a match (imported only when run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._cliutil import DetectorOpt, EmbedderOpt, JsonOpt, OutputError, emit, matcher_for


def explain(
    image1: Annotated[Path, typer.Argument(help="First image.")],
    image2: Annotated[Path, typer.Argument(help="Second image.")],
    out: Annotated[
        Path | None, typer.Option(help="Write the figure here (PNG): both faces with their maps, the verdict.")
    ] = None,
    method: Annotated[
        str, typer.Option(help="auto (decomposition, else occlusion), decomposition, or occlusion.")
    ] = "auto",
    threshold: Annotated[float | None, typer.Option(help="Cosine similarity threshold.")] = None,
    fmr: Annotated[
        float | None, typer.Option(help="Target false-match rate (threshold from the model card's calibration).")
    ] = None,
    aligned: Annotated[bool, typer.Option(help="Inputs are aligned 112x112 crops: skip detection.")] = False,
    detector: DetectorOpt = None,
    embedder: EmbedderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why are two faces (not) a match? Similarity maps of both faces and their region shares."""
    from .explain import check_method

    m = matcher_for(detector, embedder)
    expl = m.explain(image1, image2, method=check_method(method), threshold=threshold, fmr=fmr, aligned=aligned)
    if out is not None:
        from .explain_render import figure

        try:
            figure(expl, out, photos=(m.load(image1), m.load(image2)), labels=(image1.name, image2.name))
        except OSError as exc:  # an unwritable path
            raise OutputError(f"cannot write it: {exc.strerror or exc}", path=str(out)) from exc
        except ValueError as exc:  # a format matplotlib does not know
            raise OutputError(f"cannot write it: {exc}", path=str(out)) from exc

    def text() -> str:
        verdict = "MATCH" if expl.is_match else "NO MATCH"
        how = f"{expl.method} (residual {expl.residual:.1e})" if expl.residual is not None else expl.method
        lines = [f"{verdict}  similarity={expl.similarity:.4f}  threshold={expl.threshold:.4f}  method={how}"]
        if expl.fallback_reason:
            lines.append(f"  (decomposition unavailable: {expl.fallback_reason})")
        for path, side in zip((image1, image2), expl.faces, strict=True):
            shares = "  ".join(f"{r.region} {100 * r.share:+.0f}%" for r in side.regions)
            lines.append(f"  {path.name}: {shares}")
        if out is not None:
            lines.append(f"figure: {out}")
        return "\n".join(lines)

    emit(as_json, {**expl.to_dict(), "figure": str(out) if out is not None else None}, text)
