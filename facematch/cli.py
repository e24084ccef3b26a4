"""The ``facematch`` command line: verify, explain, detect, embed, models, demo (+ gallery, eval, calibrate, serve,
export).

Exit status 0 when the command ran; otherwise non-zero with a one-line message on stderr.
Heavy modules are imported inside commands, so ``facematch --help`` is instant.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from .errors import FacematchError

app = typer.Typer(
    name="facematch",
    help="Face matching on hyperspherical embeddings (ArcFace family): detect, align, embed, verify, identify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Model cards and the installed model pack.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _register_subcommands() -> None:
    """Sub-apps of the other rooms; their modules are light (heavy imports live inside commands)."""
    from .eval.cli import calibrate, eval_app, quality_fit
    from .export.cli import export_app
    from .gallery.cli import gallery_app
    from .server.cli import serve

    app.add_typer(gallery_app, name="gallery")
    app.add_typer(eval_app, name="eval")
    app.add_typer(export_app, name="export")
    app.command("serve")(serve)
    app.command("calibrate")(calibrate)
    app.command("quality-fit")(quality_fit)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _matcher(detector: str | None, embedder: str | None, det_size: int | None = None, **kw: Any) -> Any:
    from .matcher import FaceMatcher

    return FaceMatcher(detector=detector, embedder=embedder, det_size=det_size, **kw)


DetectorOpt = Annotated[str | None, typer.Option(help="Detector card id, card JSON, or model file with a card.")]
EmbedderOpt = Annotated[str | None, typer.Option(help="Embedder card id, card JSON, or model file with a card.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def verify(
    image1: Annotated[Path | None, typer.Argument(help="First image (or give --pairs).")] = None,
    image2: Annotated[Path | None, typer.Argument(help="Second image.")] = None,
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
    aligned: Annotated[bool, typer.Option(help="Inputs are aligned 112x112 crops: skip detection.")] = False,
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
            fail("give --fmr (or its deprecated alias --far), not both", 2)
        fmr = far
    if pairs is not None:
        if image1 is not None or image2 is not None:
            fail("give two images or --pairs, not both", 2)
        if out is None:
            fail("--pairs needs --out (the results CSV)", 2)
        from .batch_cli import run_pairs

        summary = run_pairs(
            _matcher(detector, embedder),
            pairs,
            out,
            root=root,
            threshold=threshold,
            fmr=fmr,
            aligned=aligned,
            chunk=chunk,
            progress=progress,
        )
        if as_json:
            _echo_json(summary)
        else:
            typer.echo(
                f"{summary['verified']} pair(s) verified ({summary['matches']} match, {summary['errors']} error), "
                f"{summary['skipped']} already in {out}"
            )
        return
    if image1 is None or image2 is None:
        fail("give two images (or --pairs FILE --out FILE)", 2)
    res = _matcher(detector, embedder).verify(image1, image2, threshold=threshold, fmr=fmr, aligned=aligned)
    if as_json:
        _echo_json(res.to_dict())
    else:
        verdict = "MATCH" if res.is_match else "NO MATCH"
        typer.echo(f"{verdict}  similarity={res.similarity:.4f}  threshold={res.threshold:.4f}")


@app.command()
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

    m = _matcher(detector, embedder)
    expl = m.explain(image1, image2, method=check_method(method), threshold=threshold, fmr=fmr, aligned=aligned)
    if out is not None:
        from .explain_render import figure

        try:
            figure(expl, out, photos=(m.load(image1), m.load(image2)), labels=(image1.name, image2.name))
        except (OSError, ValueError) as exc:  # an unwritable path, or a format matplotlib does not know
            fail(f"cannot write {out}: {exc}")
    if as_json:
        _echo_json({**expl.to_dict(), "figure": str(out) if out is not None else None})
        return
    verdict = "MATCH" if expl.is_match else "NO MATCH"
    how = f"{expl.method} (residual {expl.residual:.1e})" if expl.residual is not None else expl.method
    typer.echo(f"{verdict}  similarity={expl.similarity:.4f}  threshold={expl.threshold:.4f}  method={how}")
    if expl.fallback_reason:
        typer.echo(f"  (decomposition unavailable: {expl.fallback_reason})")
    for path, side in zip((image1, image2), expl.faces, strict=True):
        shares = "  ".join(f"{r.region} {100 * r.share:+.0f}%" for r in side.regions)
        typer.echo(f"  {path.name}: {shares}")
    if out is not None:
        typer.echo(f"figure: {out}")


@app.command()
def detect(
    image: Annotated[Path, typer.Argument(help="Image to search for faces.")],
    draw: Annotated[Path | None, typer.Option(help="Write a copy of the image with boxes and landmarks.")] = None,
    det_size: Annotated[int | None, typer.Option(help="Detector input long side (default: from the image).")] = None,
    quality: Annotated[bool, typer.Option(help="Measure each face's quality (aligns and embeds every face).")] = True,
    detector: DetectorOpt = None,
    embedder: EmbedderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find every face: box, score, 5 landmarks in original image coordinates, and its quality."""
    m = _matcher(detector, embedder, det_size=det_size)
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
    if draw is not None:
        _draw(decoded.pixels, dets, decoded.scale, draw)
    if as_json:
        faces = [
            {**f.to_dict(), "quality": q.to_dict() if q is not None else None}
            for f, q in zip(dets, qualities, strict=True)
        ]
        _echo_json({"faces": faces, "count": len(dets)})
    else:
        typer.echo(f"{len(dets)} face(s)")
        for i, (f, q) in enumerate(zip(dets, qualities, strict=True)):
            x1, y1, x2, y2 = (round(float(v)) for v in f.box)
            extra = "" if q is None else f" quality={_unified_text(q)}"
            typer.echo(f"  #{i}: box=({x1},{y1},{x2},{y2}) score={f.score:.3f}{extra}")


def _unified_text(q: Any) -> str:
    return f"{q.unified:.1f}" if q.unified is not None else f"n/a ({q.unified_status})"


@app.command("quality")
def quality_cmd(
    image: Annotated[Path, typer.Argument(help="Image holding one or more faces (or an aligned crop with --aligned).")],
    all_faces: Annotated[
        bool, typer.Option("--all-faces", help="Every face, largest first (default: the largest).")
    ] = False,
    aligned: Annotated[bool, typer.Option(help="Input is an aligned crop: no detection, no face geometry.")] = False,
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
    m = _matcher(detector, embedder)
    prep, found = assess_image(
        m, image, faces="all" if all_faces else "largest", aligned=aligned, mirror=mirror, pose106=pose106
    )
    rows = []
    for i, q in enumerate(found):
        check = gate.check(q)
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
    if as_json:
        _echo_json({"image": str(image), "faces_total": prep.faces_total, "faces": rows})
        return
    for i, (q, check) in enumerate(zip(found, (gate.check(q) for q in found), strict=True)):
        typer.echo(f"face #{i}: unified quality {_unified_text(q)} ({UNIFIED_UNIT}; model {q.model_id})")
        if q.missing:
            typer.echo(f"  missing components: {', '.join(q.missing)}")
        for name, value in q.components.items():
            shown = "not measured" if value is None else f"{value:.4g} {COMPONENTS[name].unit}"
            typer.echo(f"  {name:<20} {shown}")
        if q.pose_method:
            typer.echo(f"  (pose from the {q.pose_method} landmarks)")
        verdict = "passes" if check.passed else "FAILS"
        typer.echo(f"  {verdict} the {gate.name} policy" + "".join(f"\n    {f.message}" for f in check.failures))


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
        fail(f"cannot write {out} (unknown image extension or unwritable path)")


@app.command()
def embed(
    image: Annotated[Path, typer.Argument(help="Image holding a face (or an aligned crop with --aligned).")],
    out: Annotated[Path | None, typer.Option(help="Write the embeddings as a .npy array (N x dim).")] = None,
    all_faces: Annotated[bool, typer.Option("--all-faces", help="Embed every face, largest first.")] = False,
    aligned: Annotated[bool, typer.Option(help="Input is an aligned crop: skip detection.")] = False,
    detector: DetectorOpt = None,
    embedder: EmbedderOpt = None,
) -> None:
    """Embed faces onto the unit hypersphere. Embeddings are biometric data: they are only written to --out."""
    import numpy as np

    embs = _matcher(detector, embedder).embed(image, aligned=aligned, faces="all" if all_faces else None)
    if out is not None:
        out = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")  # what np.save writes
        try:
            np.save(out, np.stack([e.vector for e in embs]))
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror or exc}")
    summary = {"count": len(embs), "faces": [e.to_dict() for e in embs], "out": str(out) if out else None}
    _echo_json(summary)
    if out is None:
        typer.echo("(embeddings not printed: pass --out FILE.npy to save them)", err=True)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List the known model cards and whether their files are installed and intact."""
    from .model_files import list_cards

    rows = []
    for card in list_cards():
        rows.append({"id": card.id, "task": card.task, **_file_status(card)})
    if as_json:
        _echo_json(rows)
    else:
        for r in rows:
            typer.echo(f"{r['id']:<20} {r['task']:<10} {r['status']:<10} {r.get('path', '')}")


def _file_status(card: Any) -> dict[str, Any]:
    from .model_files import resolve_model_path, verify_file

    try:
        path = resolve_model_path(card)
        verify_file(card, path)
        return {"status": "ok", "path": str(path)}
    except FacematchError as exc:
        return {"status": "missing" if exc.code == "model_not_found" else "corrupt", "error": exc.message}


@models_app.command("check")
def models_check(
    model: Annotated[list[str] | None, typer.Argument(help="Card ids or paths (default: the default pack).")] = None,
    providers: Annotated[
        str | None,
        typer.Option(
            help="Load each model on these providers (comma-separated: cuda,cpu / tensorrt / torch-cuda) and "
            "fail unless they are the ones running (default: FACEMATCH_PROVIDERS, else TensorRT > CUDA > CPU, "
            "reported without failing)."
        ),
    ] = None,
    load: Annotated[bool, typer.Option(help="Load each model and print the providers it runs on.")] = True,
) -> None:
    """Verify that model files exist and match their cards' sha256, and show what each model runs on."""
    from .cards import DEFAULT_DETECTOR, DEFAULT_EMBEDDER, DEFAULT_LANDMARKS
    from .model_files import load_card

    wanted = [p.strip() for p in providers.split(",") if p.strip()] if providers else None
    bad = 0
    for ref in model or [DEFAULT_DETECTOR, DEFAULT_EMBEDDER, DEFAULT_LANDMARKS]:
        card = load_card(ref)
        st = _file_status(card)
        line = f"{card.id}: {st['status']} {st.get('path') or st.get('error')}"
        if st["status"] == "ok" and load:
            line += f"  providers={_running_providers(card, wanted)}"
        typer.echo(line)
        bad += st["status"] != "ok"
    if bad:
        fail(f"{bad} model(s) missing or corrupt")


def _running_providers(card: Any, wanted: list[str] | None) -> list[str]:
    """What a model really runs on (raises ProviderUnavailableError when explicit providers did not load)."""
    from .model_files import resolve_model_path
    from .runtime import create_session, split_torch_providers

    device, ort_providers = split_torch_providers(wanted)
    if device is not None and card.task == "embedding":
        from .zoo.torch_embedder import TorchEmbedder

        return TorchEmbedder.load(card, device=device).providers
    if device is not None:  # the torch runtime embeds; other models stay on ONNX Runtime
        ort_providers = ort_providers or ["cpu"]
    session = create_session(
        resolve_model_path(card),
        providers=ort_providers,
        card=card,
        dynamic_batch=card.task == "embedding" and card.input.dynamic_batch,
    )
    return list(session.get_providers())


@app.command()
def demo(as_json: JsonOpt = False) -> None:
    """Run the default pack end to end on the photos shipped with it: find Yao Ming among the players."""
    from .cards import DEFAULT_EMBEDDER
    from .model_files import load_card, resolve_model_path

    pack = resolve_model_path(load_card(DEFAULT_EMBEDDER)).parent
    probe, group = pack / "yaoming.jpg", pack / "players.jpg"
    m = _matcher(None, None)
    probe_emb = m.embed(probe)[0]
    faces = m.embed(group, faces="all")
    sims = [float(probe_emb.vector @ f.vector) for f in faces]
    thr = m.threshold_for()
    best = max(range(len(sims)), key=sims.__getitem__)
    matches = [i for i, s in enumerate(sims) if s >= thr]
    result = {
        "probe": str(probe),
        "group": str(group),
        "faces_in_group": len(faces),
        "threshold": round(thr, 6),
        "best_face": faces[best].face.to_dict() if faces[best].face else None,
        "best_similarity": round(sims[best], 6),
        "matching_faces": len(matches),
    }
    if as_json:
        _echo_json(result)
    else:
        typer.echo(
            f"{len(faces)} faces in {group.name}; {len(matches)} match {probe.name} "
            f"(best similarity {sims[best]:.3f}, threshold {thr:.3f})"
        )
    if len(matches) != 1:
        fail(f"expected exactly one matching face, found {len(matches)}")


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning facematch errors into one-line messages."""
    try:
        # Outside standalone mode click *returns* the code of a ``typer.Exit`` instead of exiting.
        exit_code = app(args=argv, standalone_mode=False)
    except FacematchError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # a missing or unreadable file named on the command line
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    except Exception as exc:  # usage errors from click (typer may vendor it), aborts, bugs
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        exit_code = getattr(exc, "exit_code", None)
        show = getattr(exc, "show", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    if isinstance(exit_code, int) and exit_code != 0:
        sys.exit(exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
