"""``facematch gallery ...`` commands (a typer sub-app; heavy imports happen inside commands).

Errors are reported by the app's group in the command line's one style (``facematch._cliutil``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from .._cliutil import AlignedOpt, JsonOpt, emit, new_app

gallery_app = new_app("Enrol faces into a gallery and identify probes (open-set).")

_GALLERY = Annotated[
    Path,
    typer.Argument(metavar="GALLERY", help="Gallery directory (e.g. people.fmg); created by enroll when absent."),
]
# The quality gate's options, one declaration each (enrolment commands default to the strict
# policy, probe commands to the lenient one).
_ENROL_POLICY = Annotated[
    str,
    typer.Option("--quality-policy", help="Quality gate: enrolment (strict, the default), probe (lenient) or none."),
]
_PROBE_POLICY = Annotated[
    str,
    typer.Option(
        "--quality-policy", help="Probe quality gate: probe (lenient, the default), enrolment (strict) or none."
    ),
]
_MIN_QUALITY = Annotated[float | None, typer.Option(help="Minimum unified quality score (0-100).")]
_MIN_FACE_SIZE = Annotated[float | None, typer.Option(help="Minimum face box short side, px.")]
_MAX_ABS_YAW = Annotated[float | None, typer.Option(help="Maximum |yaw|, degrees.")]


@contextmanager
def _duplicate_advice(advice: str) -> Iterator[None]:
    """A duplicate identity named with what to do about it in this command."""
    from ..errors import DuplicateIdentityError

    try:
        yield
    except DuplicateIdentityError as exc:
        ident = exc.details.get("identity_id")
        raise DuplicateIdentityError(f"identity {ident!r} already exists; {advice}", **exc.details) from exc


def _open(path: Path, *, read_only: bool, create: bool = False, **kwargs: Any) -> Any:
    from . import Gallery

    return Gallery.open(path, read_only=read_only, create=create, **kwargs)


@gallery_app.command("enroll")
def enroll_cmd(
    gallery: _GALLERY,
    identity: Annotated[str, typer.Argument(metavar="ID", help="Identity id to create (or extend with --add).")],
    images: Annotated[
        list[Path], typer.Argument(metavar="IMAGE...", help="Face images of this identity, one template each.")
    ],
    metadata: Annotated[str | None, typer.Option(help="JSON object stored with the identity.")] = None,
    add: Annotated[bool, typer.Option("--add", help="Add templates to an existing identity.")] = False,
    aligned: AlignedOpt = False,
    multi_face: Annotated[str, typer.Option(help="Images with several faces: 'largest' or 'reject'.")] = "largest",
    strict: Annotated[bool, typer.Option(help="Write nothing unless every image gives a template.")] = False,
    quality_policy: _ENROL_POLICY = "enrolment",
    min_quality: _MIN_QUALITY = None,
    min_face_size: _MIN_FACE_SIZE = None,
    max_abs_yaw: _MAX_ABS_YAW = None,
    as_json: JsonOpt = False,
) -> None:
    """Enrol an identity from face images, reporting what each image gave (low-quality faces are refused)."""
    from ..quality import policy_named

    gate = policy_named(quality_policy, min_quality=min_quality, min_face_size=min_face_size, max_abs_yaw=max_abs_yaw)
    meta = _json_object(metadata, "--metadata") if metadata else None
    with _open(gallery, read_only=False, create=True, multi_face=multi_face) as g:
        if add:
            report = g.add_templates(identity, [str(p) for p in images], aligned=aligned, strict=strict, quality=gate)
        else:
            with _duplicate_advice("add templates to it with 'facematch gallery enroll GALLERY ID IMAGE... --add'"):
                report = g.enroll(
                    identity, [str(p) for p in images], meta, aligned=aligned, strict=strict, quality=gate
                )

    def text() -> str:
        lines = [f"{report.identity_id}: {len(report.template_ids)} template(s) of {len(report.outcomes)} image(s)"]
        for o in report.outcomes:
            extra = f"template {o.template_id}" if o.ok else (o.error or "")
            lines.append(f"  {o.source}: {o.status} {extra}".rstrip())
        return "\n".join(lines)

    emit(as_json, report.to_dict(), text)


def identify_text(res: Any) -> str:
    """The human answer of ``gallery identify``: the decision, how its threshold was set, the candidates.

    An FPIR threshold names the N it was scaled by (the gallery's templates), so it can be
    reproduced; a candidate's FMR finer than the calibration resolves prints as a bound.
    """
    head = "unknown" if res.is_unknown else f"match: {res.identity_id}"
    if res.target_fpir is not None:
        how = f"for FPIR {res.target_fpir:g} over {res.comparisons} template(s)"
        if res.threshold_extrapolated:
            how += ", extrapolated past the calibration's resolution"
    else:
        how = "given"
    lines = [f"{head} (threshold {res.threshold:.4f} {how}; gallery of {res.gallery_size} identities)"]
    for c in res.candidates:
        fmr = f"  est. FMR {c.fmr_text()}" if c.estimated_fmr is not None else ""
        lines.append(f"  {c.identity_id}: similarity {c.similarity:.4f}{fmr}")
    return "\n".join(lines)


@gallery_app.command("identify")
def identify_cmd(
    gallery: _GALLERY,
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Probe image.")],
    k: Annotated[int, typer.Option("--k", "-k", help="Number of candidate identities.")] = 5,
    threshold: Annotated[float | None, typer.Option(help="Accept at or above this cosine similarity.")] = None,
    fpir: Annotated[float | None, typer.Option(help="Target false-positive identification rate.")] = None,
    aligned: AlignedOpt = False,
    quality_policy: _PROBE_POLICY = "probe",
    min_quality: _MIN_QUALITY = None,
    min_face_size: _MIN_FACE_SIZE = None,
    max_abs_yaw: _MAX_ABS_YAW = None,
    as_json: JsonOpt = False,
) -> None:
    """Identify the (largest) face in IMAGE: ranked identities, or unknown (exit 2 for a probe below
    the quality gate)."""
    from ..quality import policy_named

    gate = policy_named(quality_policy, min_quality=min_quality, min_face_size=min_face_size, max_abs_yaw=max_abs_yaw)
    with _open(gallery, read_only=True) as g:
        res = g.identify(str(image), k=k, threshold=threshold, fpir=fpir, aligned=aligned, quality=gate)
    emit(as_json, res.to_dict(), lambda: identify_text(res))


@gallery_app.command("list")
def list_cmd(
    gallery: _GALLERY,
    limit: Annotated[int, typer.Option(help="Identities per page (1-1000).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List identities, a page at a time."""
    with _open(gallery, read_only=True) as g:
        page = g.list_identities(limit=limit, cursor=cursor)

    def text() -> str:
        lines = [f"{i.identity_id}\t{i.num_templates} template(s)\t{json.dumps(i.metadata)}" for i in page.items]
        if page.next_cursor:
            lines.append(f"next cursor: {page.next_cursor}")
        return "\n".join(lines) if lines else "(no identities)"

    emit(as_json, page.to_dict(), text)


@gallery_app.command("delete")
def delete_cmd(
    gallery: _GALLERY,
    identity: Annotated[str, typer.Argument(metavar="ID", help="Identity id to delete.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete an identity and all its templates."""
    with _open(gallery, read_only=False) as g:
        info = g.delete(identity)
    emit(as_json, info.to_dict(), lambda: f"deleted {info.identity_id} ({info.num_templates} template(s))")


def _writable(path: Path) -> bool:
    """Whether this user can write the gallery (its directory and database file)."""
    from .gallery import DB_FILE

    db = path / DB_FILE
    return os.access(path, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))


@gallery_app.command("info")
def info_cmd(gallery: _GALLERY, as_json: JsonOpt = False) -> None:
    """Model, size and index of a gallery, and whether you can write it."""
    with _open(gallery, read_only=True) as g:  # read-only: works while a server holds the writer lock
        data = g.info().to_dict()
    data["read_only"] = not _writable(gallery)  # the gallery's, not this read-only handle's
    emit(as_json, data, lambda: "\n".join(f"{k}: {v}" for k, v in data.items()))


@gallery_app.command("verify")
def verify_cmd(
    gallery: _GALLERY,
    identity: Annotated[str, typer.Argument(metavar="ID", help="Enrolled identity id to compare with.")],
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Probe image (its largest face).")],
    threshold: Annotated[float | None, typer.Option(help="Accept at or above this cosine similarity.")] = None,
    fmr: Annotated[float | None, typer.Option(help="Target false-match rate (1:1 threshold from the card).")] = None,
    aligned: AlignedOpt = False,
    quality_policy: _PROBE_POLICY = "probe",
    min_quality: _MIN_QUALITY = None,
    min_face_size: _MIN_FACE_SIZE = None,
    max_abs_yaw: _MAX_ABS_YAW = None,
    as_json: JsonOpt = False,
) -> None:
    """Is the face in IMAGE the enrolled IDENTITY? (1:1 against its templates; exit 0 either way,
    2 for a probe below the quality gate)"""
    from ..quality import policy_named

    gate = policy_named(quality_policy, min_quality=min_quality, min_face_size=min_face_size, max_abs_yaw=max_abs_yaw)
    with _open(gallery, read_only=True) as g:
        res = g.verify(identity, str(image), threshold=threshold, fmr=fmr, aligned=aligned, quality=gate)

        def text() -> str:
            verdict = "MATCH" if res.is_match else "NO MATCH"
            fp = f", target FMR {res.target_fmr:g}" if res.target_fmr is not None else ""
            lines = [
                f"{verdict} {res.identity_id}  similarity={res.similarity:.4f} ({res.aggregation} of "
                f"{len(res.templates)} template(s))  threshold={res.threshold:.4f}{fp}"
            ]
            lines += [f"  template {t.template_id}: {t.similarity:.4f}" for t in res.templates]
            return "\n".join(lines)

        emit(as_json, res.to_dict(), text)


@gallery_app.command("update")
def update_cmd(
    gallery: _GALLERY,
    identity: Annotated[str, typer.Argument(metavar="ID", help="Identity id to update.")],
    metadata: Annotated[str, typer.Option(help="JSON object that replaces the identity's metadata.")],
    as_json: JsonOpt = False,
) -> None:
    """Replace an identity's metadata."""
    meta = _json_object(metadata, "--metadata")
    with _open(gallery, read_only=False) as g:
        info = g.set_metadata(identity, meta)
    emit(as_json, info.to_dict(), lambda: f"{info.identity_id}: metadata {json.dumps(info.metadata)}")


@gallery_app.command("enroll-bulk")
def enroll_bulk_cmd(
    gallery: _GALLERY,
    source: Annotated[
        Path,
        typer.Argument(help="A folder with one sub-folder of images per identity, or a CSV identity,path[,metadata]."),
    ],
    report: Annotated[Path | None, typer.Option(help="Write a per-image report CSV here.")] = None,
    aligned: AlignedOpt = False,
    multi_face: Annotated[str, typer.Option(help="Images with several faces: 'largest' or 'reject'.")] = "largest",
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr (tqdm if installed).")] = True,
    quality_policy: _ENROL_POLICY = "enrolment",
    min_quality: _MIN_QUALITY = None,
    as_json: JsonOpt = False,
) -> None:
    """Enrol many identities at once; re-runs skip images already enrolled; low-quality faces are refused."""
    from ..quality import policy_named

    with _open(gallery, read_only=False, create=True, multi_face=multi_face) as g:
        gate = policy_named(quality_policy, min_quality=min_quality)
        tick, close = _progress_bar("enrol", "image") if progress else (None, lambda: None)
        try:
            result = g.enroll_bulk(source, aligned=aligned, report_path=report, progress=tick, quality=gate)
        finally:
            close()
        summary = result.to_dict()

        def text() -> str:
            head = (
                f"{summary['enrolled']} image(s) enrolled, {summary['skipped']} already enrolled, "
                f"{summary['failed']} failed; {len(result.created)} identities created, "
                f"{len(result.extended)} extended"
            )
            lines = [head] + [
                f"  {o.identity_id}/{o.source}: {o.status} {o.error or ''}".rstrip() for o in result.failed
            ]
            if report is not None:
                lines.append(f"report: {report}")
            return "\n".join(lines)

        emit(as_json, summary, text)


@gallery_app.command("export")
def export_cmd(
    gallery: _GALLERY,
    out: Annotated[Path, typer.Argument(help="The portable file to write (a zip; e.g. people-backup.zip).")],
    as_json: JsonOpt = False,
) -> None:
    """Write the gallery (identities, metadata, templates, model id) to one portable file."""
    with _open(gallery, read_only=True) as g:
        info = g.export_to(out)
        emit(
            as_json,
            info.to_dict(),
            lambda: f"{info.identities} identities, {info.templates} templates ({info.model_id}) -> {info.path}",
        )


@gallery_app.command("import")
def import_cmd(
    gallery: _GALLERY,
    file: Annotated[Path, typer.Argument(help="A file written by 'facematch gallery export'.")],
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Keep identities that already exist instead of refusing the file.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add the identities of an exported file to a gallery (refused if it is another model's)."""
    with _open(gallery, read_only=False, create=True) as g:
        with _duplicate_advice("nothing was imported; pass --skip-existing to keep it and import the others"):
            rep = g.import_from(file, on_existing="skip" if skip_existing else "error")
        emit(
            as_json,
            rep.to_dict(),
            lambda: f"{len(rep.imported)} identities ({rep.templates} templates) imported, {len(rep.skipped)} skipped",
        )


def _json_object(text: str, option: str) -> dict[str, Any]:
    from ..errors import InvalidArgumentError

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{option} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{option} must be a JSON object")
    return value


def _progress_bar(desc: str, unit: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(tick(done, total), close()) on stderr: a tqdm bar, or a plain line per tick without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return (lambda done, total: typer.echo(f"{desc}: {done}/{total} {unit}s", err=True)), (lambda: None)
    bar: Any = None

    def tick(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr)
        bar.update(done - bar.n)

    return tick, (lambda: bar.close() if bar is not None else None)


__all__ = ["gallery_app", "identify_text"]
