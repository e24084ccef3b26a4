"""The ``facematch`` command line: verify, detect, quality, embed (+ explain, models, demo, gallery, eval,
calibrate, quality-fit, export, serve, imported when run).

Every error is one line on stderr, ``error [code]: <image or path>: message``, with a
JSON error object on stdout as well under ``--json``, and a documented exit status
(:data:`facematch._cliutil.EXIT_CODES_HELP`). The sub-commands of the other rooms are
listed in :data:`LAZY_COMMANDS` and imported only when used, so start-up stays short.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ._cliutil import (
    EXIT_CODES_HELP,
    AlignedOpt,
    DetectorOpt,
    EmbedderOpt,
    JsonOpt,
    LazyCommand,
    LazyGroup,
    OutputError,
    emit,
    matcher_for,
    new_app,
    usage_error,
)
from .errors import FacematchError, InvalidArgumentError

# Sub-commands imported on first use: name -> module, attribute (a typer app or a command
# function) and the one-line help `facematch --help` lists (tests check it matches the command).
LAZY_COMMANDS: dict[str, LazyCommand] = {
    "explain": LazyCommand(
        "facematch.explain_cli",
        "explain",
        "Why are two faces (not) a match? Similarity maps of both faces and their region shares.",
    ),
    "models": LazyCommand("facematch.pack_cli", "models_app", "Model cards and the installed model pack."),
    "demo": LazyCommand(
        "facematch.pack_cli",
        "demo",
        "Run the default pack end to end on the photos shipped with it: find Yao Ming among the players.",
    ),
    "gallery": LazyCommand(
        "facematch.gallery.cli", "gallery_app", "Enrol faces into a gallery and identify probes (open-set)."
    ),
    "eval": LazyCommand(
        "facematch.eval.cli",
        "eval_app",
        "Measure accuracy, identification, fairness and embedding health on labelled images.",
    ),
    "calibrate": LazyCommand(
        "facematch.eval.cli",
        "calibrate",
        "Measure genuine/impostor scores on a calibration set and store thresholds + the FMR curve in a model card.",
    ),
    "quality-fit": LazyCommand(
        "facematch.eval.cli",
        "quality_fit",
        "Fit the unified quality score (a logistic model on quality components) and store it in the model card.",
    ),
    "export": LazyCommand(
        "facematch.export.cli",
        "export_app",
        "Export trained face-embedding checkpoints to ONNX / fp16 / int8 / TensorRT, each checked against its source.",
    ),
    "serve": LazyCommand(
        "facematch.server.cli",
        "serve",
        "Serve /verify, /identify, /detect, the gallery routes and /healthz, /readyz, /metrics.",
    ),
}


class _RootGroup(LazyGroup):
    lazy_commands = LAZY_COMMANDS


app = new_app(
    "Face matching on hyperspherical embeddings (ArcFace family): detect, align, embed, verify, identify.",
    cls=_RootGroup,
    name="facematch",
    epilog=EXIT_CODES_HELP,
)


def _about(image: Path, exc: FacematchError) -> FacematchError:
    """``exc`` naming ``image`` (unless it already names an input)."""
    return exc if "image" in exc.details else exc.about(str(image))


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def verify(
    image1: Annotated[Path | None, typer.Argument(metavar="IMAGE1", help="First image (or give --pairs).")] = None,
    image2: Annotated[Path | None, typer.Argument(metavar="IMAGE2", help="Second image.")] = None,
    pairs: Annotated[
        Path | None,
        typer.Option(help="CSV of image pairs (columns image1,image2 or the first two); needs --out."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Results CSV for --pairs: appended to, pairs already in it are skipped.")
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Folder relative pair paths start from (default: the CSV's).")
    ] = None,
    chunk: Annotated[int, typer.Option(help="Pairs per batch with --pairs (flushed to --out after each).")] = 512,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr with --pairs (tqdm if installed).")] = True,
    threshold: Annotated[float | None, typer.Option(help="Cosine similarity threshold.")] = None,
    fmr: Annotated[
        float | None, typer.Option(help="Target false-match rate (threshold from the model card's calibration).")
    ] = None,
    far: Annotated[float | None, typer.Option(hidden=True, help="Deprecated alias of --fmr.")] = None,
    aligned: AlignedOpt = False,
    detector: DetectorOpt = None,
    embedder: EmbedderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Are the faces in two images the same person? (largest face of each)

    With --pairs, every pair of a CSV, each distinct image processed once; results go to --out,
    and a re-run skips the pairs already there (append-safe, resumable).
    """
    if far is not None:
        typer.echo("warning: --far is deprecated; use --fmr (the false-match rate)", err=True)
        if fmr is not None:
            raise InvalidArgumentError("give --fmr (or its deprecated alias --far), not both")
        fmr = far
    if pairs is not None:
        if image1 is not None or image2 is not None:
            raise usage_error("give two images or --pairs, not both")
        if out is None:
            raise usage_error("--pairs needs --out (the results CSV)")
        from .batch_cli import run_pairs

        summary = run_pairs(
            matcher_for(detector, embedder, spin_wait=True),
            pairs,
            out,
            root=root,
            threshold=threshold,
            fmr=fmr,
            aligned=aligned,
            chunk=chunk,
            progress=progress,
        )
        emit(
            as_json,
            summary,
            lambda: (
                f"{summary['verified']} pair(s) verified ({summary['matches']} match, {summary['errors']} error), "
                f"{summary['skipped']} already in {out}"
            ),
        )
        return
    if image1 is None:
        raise usage_error("Missing argument 'IMAGE1' (or give --pairs FILE --out FILE)")
    if image2 is None:
        raise usage_error("Missing argument 'IMAGE2'")
    res = matcher_for(detector, embedder).verify(image1, image2, threshold=threshold, fmr=fmr, aligned=aligned)
    target = f" (FMR {res.target_fmr:g})" if res.target_fmr is not None else ""
    emit(
        as_json,
        res.to_dict(),
        lambda: (
            f"{'MATCH' if res.is_match else 'NO MATCH'}  similarity={res.similarity:.4f}  "
            f"threshold={res.threshold:.4f}{target}"
        ),
    )


@app.command()
def detect(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image to search for faces.")],
    draw: Annotated[Path | None, typer.Option(help="Write a copy of the image with boxes and landmarks.")] = None,
    det_size: Annotated[int | None, typer.Option(help="Detector input long side (default: from the image).")] = None,
    quality: Annotated[bool, typer.Option(help="Measure each face's quality (aligns and embeds every face).")] = True,
    detector: DetectorOpt = None,
    embedder: EmbedderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find every face: box, score, 5 landmarks in original image coordinates, and its quality."""
    m = matcher_for(detector, embedder, det_size=det_size)
    try:
        decoded = m.load(image)
        if quality:
            from .errors import NoFaceError

            try:  # the shared step: detect, every face largest first, aligned; then embed for the norms
                prep = m.prepare(decoded, "all")
            except NoFaceError:
                dets, qualities = m.detect(decoded), []
            else:
                dets = prep.faces
                qualities = list(m.assess(prep, m.embed_crops(prep.crops)[1]))
        else:
            dets = m.detect(decoded).sorted_by_area()
            qualities = [None] * len(dets)
    except FacematchError as exc:
        raise _about(image, exc) from exc
    if draw is not None:
        _draw(decoded.pixels, dets, decoded.scale, draw)
    faces = [
        {**f.to_dict(), "quality": q.to_dict() if q is not None else None} for f, q in zip(dets, qualities, strict=True)
    ]

    def text() -> str:
        lines = [f"{len(dets)} face(s)"]
        for i, (f, q) in enumerate(zip(dets, qualities, strict=True)):
            x1, y1, x2, y2 = (round(float(v)) for v in f.box)
            extra = "" if q is None else f" quality={_unified_text(q)}"
            lines.append(f"  #{i}: box=({x1},{y1},{x2},{y2}) score={f.score:.3f}{extra}")
        return "\n".join(lines)

    emit(as_json, {"faces": faces, "count": len(dets)}, text)


def _unified_text(q: Any) -> str:
    return f"{q.unified:.1f}" if q.unified is not None else f"n/a ({q.unified_status})"


@app.command("quality")
def quality_cmd(
    image: Annotated[
        Path,
        typer.Argument(metavar="IMAGE", help="Image holding one or more faces (or an aligned crop with --aligned)."),
    ],
    all_faces: Annotated[
        bool, typer.Option("--all-faces", help="Every face, largest first (default: the largest).")
    ] = False,
    aligned: AlignedOpt = False,
    mirror: Annotated[
        bool, typer.Option("--mirror", help="Also measure mirror consistency (one extra embedding per face).")
    ] = False,
    pose106: Annotated[
        bool, typer.Option("--pose106", help="Measure the pose with the 106-point landmark model (2d106det).")
    ] = False,
    policy: Annotated[
        str, typer.Option(help="Check the faces against a quality policy: enrolment, probe or none.")
    ] = "enrolment",
    detector: DetectorOpt = None,
    embedder: EmbedderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quality of the face(s) in an image: every component with its unit, the unified score, a policy check.

    Exit status 0 whatever the verdict; the verdict is printed (and in the JSON).
    """
    from .quality import COMPONENTS, UNIFIED_UNIT, assess_image, policy_named

    gate = policy_named(policy)
    m = matcher_for(detector, embedder)
    try:
        prep, found = assess_image(
            m, image, faces="all" if all_faces else "largest", aligned=aligned, mirror=mirror, pose106=pose106
        )
    except FacematchError as exc:
        raise _about(image, exc) from exc
    checks = [gate.check(q) for q in found]
    rows = []
    for i, (q, check) in enumerate(zip(found, checks, strict=True)):
        face = prep.face(i)
        rows.append(
            {
                "face": face.to_dict() if face is not None else None,
                "quality": q.to_dict(),
                "policy": gate.name,
                "passes": check.passed,
                "failures": [f.to_dict() for f in check.failures],
                "unchecked": list(check.unchecked),
            }
        )

    def text() -> str:
        lines = []
        for i, (q, check) in enumerate(zip(found, checks, strict=True)):
            lines.append(f"face #{i}: unified quality {_unified_text(q)} ({UNIFIED_UNIT}; model {q.model_id})")
            if q.missing:
                lines.append(f"  missing components: {', '.join(q.missing)}")
            for name, value in q.components.items():
                shown = "not measured" if value is None else f"{value:.4g} {COMPONENTS[name].unit}"
                lines.append(f"  {name:<20} {shown}")
            if q.pose_method:
                lines.append(f"  (pose from the {q.pose_method} landmarks)")
            verdict = "passes" if check.passed else "FAILS"
            lines.append(f"  {verdict} the {gate.name} policy" + "".join(f"\n    {f.message}" for f in check.failures))
        return "\n".join(lines)

    emit(as_json, {"image": str(image), "faces_total": prep.faces_total, "faces": rows}, text)


def _draw(pixels: Any, dets: Any, scale: tuple[float, float], out: Path) -> None:
    import cv2
    import numpy as np

    img = pixels.copy()
    s = np.array(scale, np.float32)
    for f in dets:
        b = (f.box / np.tile(s, 2)).astype(int)
        cv2.rectangle(img, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 255, 0), 2)
        for x, y in (f.landmarks / s).astype(int):
            cv2.circle(img, (int(x), int(y)), 2, (0, 0, 255), -1)
    try:
        written = cv2.imwrite(str(out), img)
    except cv2.error:  # OpenCV raises, rather than returning False, for an unknown extension
        written = False
    if not written:
        raise OutputError("cannot write it (unknown image extension or unwritable path)", path=str(out))


@app.command()
def embed(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image holding a face (or an aligned crop).")],
    out: Annotated[Path | None, typer.Option(help="Write the embeddings as a .npy array (N x dim).")] = None,
    all_faces: Annotated[bool, typer.Option("--all-faces", help="Embed every face, largest first.")] = False,
    aligned: AlignedOpt = False,
    detector: DetectorOpt = None,
    embedder: EmbedderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed faces onto the unit hypersphere. Embeddings are biometric data: they are only written to --out."""
    import numpy as np

    m = matcher_for(detector, embedder)
    try:
        embs = m.embed(image, aligned=aligned, faces="all" if all_faces else None)
    except FacematchError as exc:
        raise _about(image, exc) from exc
    if out is not None:
        out = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")  # what np.save writes
        try:
            np.save(out, np.stack([e.vector for e in embs]))
        except OSError as exc:
            raise OutputError(f"cannot write it: {exc.strerror or exc}", path=str(out)) from exc
    summary = {"count": len(embs), "faces": [e.to_dict() for e in embs], "out": str(out) if out else None}

    def text() -> str:
        lines = [f"{len(embs)} face(s) embedded by {m.model_id} ({m.dim}-D)"]
        for i, e in enumerate(embs):
            box = (
                "aligned crop" if e.face is None else "box=({},{},{},{})".format(*(round(float(v)) for v in e.face.box))
            )
            norm = f" norm={e.norm:.2f}" if e.norm is not None else ""
            lines.append(f"  #{i}: {box}{norm}")
        lines.append(f"wrote {out}" if out is not None else "(vectors not printed: pass --out FILE.npy to save them)")
        return "\n".join(lines)

    emit(as_json, summary, text)


def main(argv: list[str] | None = None) -> None:
    """Entry point (``facematch``): run the app; its group reports errors and sets the exit status.

    pydantic's plugin discovery (a scan of every installed distribution's entry points, tens of
    milliseconds) is skipped unless the caller set ``PYDANTIC_DISABLE_PLUGINS`` themselves: the
    command line uses no pydantic plugin. Library users (``import facematch``) are unaffected.
    """
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    app(args=argv, prog_name="facematch")


if __name__ == "__main__":  # pragma: no cover
    main()
