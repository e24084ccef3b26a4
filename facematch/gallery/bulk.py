"""Bulk enrolment from a folder (one sub-folder per identity) or a CSV (``identity,path[,metadata]``).

    report = enroll_bulk(gallery, "people/", report_path="enrol-report.csv")

Each image is named by its path relative to the folder (``alice/a1.jpg``) or as the CSV writes
it, and that name is stored as its template's source. A re-run skips every image whose name is
already a source of its identity's templates, so an interrupted run can simply be started again;
images that gave no template are tried again.

Enrolment composes the shared steps: images are prepared side by side over the matcher's workers
(:meth:`FaceMatcher.prepare_each`, the preparation of
:func:`~facematch.gallery.enrol.prepare_for_enrolment`), embedded in one ``embed_crops`` call
per chunk, assessed (:func:`~facematch.gallery.enrol.assess_enrolment`) and committed by
:meth:`Gallery.enroll_prepared` under the quality policy (default the strict enrolment one: a
face below it is a ``low_quality`` outcome) (a new identity is created by its first chunk that
gives a template; metadata is set then, existing identities keep theirs).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidArgumentError
from ..eval.data import IMAGE_EXTENSIONS
from ..quality import ENROLMENT_POLICY, QualityPolicy
from ..types import PreparedImage
from .enrol import assess_enrolment, plan_enrolment
from .store import validate_identity_id
from .types import BulkEnrollReport, BulkImageOutcome, BulkStatus, ImageOutcome

if TYPE_CHECKING:
    from .gallery import Gallery

logger = logging.getLogger(__name__)

REPORT_FIELDS = ("identity_id", "source", "status", "template_id", "faces_found", "error")
Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class BulkItem:
    """One image to enrol: its identity, file, name in reports/sources, and the identity's metadata."""

    identity_id: str
    path: Path
    source: str
    metadata: dict[str, Any] | None = None


def plan_folder(root: Path) -> list[BulkItem]:
    """Every image of every sub-folder (sorted), the sub-folder's name being the identity id."""
    if not root.is_dir():
        raise InvalidArgumentError(f"{root} is not a folder")
    items = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(sub.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                items.append(BulkItem(sub.name, f, f.relative_to(root).as_posix()))
    if not items:
        raise InvalidArgumentError(f"{root} holds no images in identity sub-folders")
    return items


def plan_csv(file: Path) -> list[BulkItem]:
    """Rows ``identity,path[,metadata JSON]`` (a header row naming ``identity`` is skipped).

    Relative paths resolve against the CSV's folder. An identity's metadata is the first one
    its rows give; rows that give another are refused.
    """
    if not file.is_file():
        raise InvalidArgumentError(f"{file} not found")
    with file.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("identity", "identity_id"):
        rows = rows[1:]
    items = []
    seen: dict[str, dict[str, Any] | None] = {}
    for n, row in enumerate(rows, start=1):
        if len(row) < 2 or len(row) > 3:
            raise InvalidArgumentError(f"{file} row {n}: expected identity,path[,metadata], got {len(row)} columns")
        identity, name = row[0].strip(), row[1].strip()
        meta = None
        if len(row) == 3 and row[2].strip():
            try:
                meta = json.loads(row[2])
            except ValueError as exc:
                raise InvalidArgumentError(f"{file} row {n}: metadata is not valid JSON: {exc}") from exc
            if not isinstance(meta, dict):
                raise InvalidArgumentError(f"{file} row {n}: metadata must be a JSON object")
        if meta is not None and seen.get(identity) not in (None, meta):
            raise InvalidArgumentError(f"{file} row {n}: other metadata for {identity!r} than an earlier row")
        if meta is not None or identity not in seen:
            seen[identity] = meta
        path = Path(name)
        items.append(BulkItem(identity, path if path.is_absolute() else file.parent / path, name))
    if not items:
        raise InvalidArgumentError(f"{file} holds no rows")
    return [BulkItem(i.identity_id, i.path, i.source, seen.get(i.identity_id)) for i in items]


def plan(source: str | os.PathLike[str]) -> list[BulkItem]:
    """A folder (:func:`plan_folder`) or a ``.csv`` file (:func:`plan_csv`)."""
    path = Path(source).expanduser()
    return plan_csv(path) if path.is_file() else plan_folder(path)


def enroll_bulk(
    gallery: Gallery,
    source: str | os.PathLike[str] | Sequence[BulkItem],
    *,
    aligned: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    chunk: int = 32,
    quality: QualityPolicy | None = ENROLMENT_POLICY,
) -> BulkEnrollReport:
    """Enrol every image of a folder or CSV (or of a :func:`plan`), skipping what is already enrolled.

    ``report_path`` gets a CSV row per image (``identity_id,source,status,template_id,faces_found,error``),
    written identity by identity so an interrupted run leaves what it did. ``progress(done, total)`` is
    called after each chunk. Per-image problems (no face, unreadable file, a face below the ``quality``
    policy, a refused identity id) are outcomes, not errors; errors about the gallery itself
    (read-only, another model) propagate. ``quality=None`` enrols without a quality gate.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InvalidArgumentError(f"chunk must be a positive integer, got {chunk!r}")
    items = list(source) if isinstance(source, Sequence) and not isinstance(source, str) else plan(source)
    by_identity: dict[str, list[BulkItem]] = {}
    for item in items:
        by_identity.setdefault(item.identity_id, []).append(item)
    writer = _ReportWriter(Path(report_path)) if report_path is not None else None
    outcomes: list[BulkImageOutcome] = []
    created: list[str] = []
    extended: list[str] = []
    done = 0
    try:
        for identity, group in by_identity.items():
            rows, was_created, added = _enrol_identity(
                gallery, identity, group, aligned, chunk, progress, done, len(items), quality
            )
            done += len(group)
            outcomes += rows
            if was_created:
                created.append(rows[0].identity_id)
            elif added:
                extended.append(rows[0].identity_id)
            if writer is not None:
                writer.write(rows)
    finally:
        if writer is not None:
            writer.close()
    return BulkEnrollReport(outcomes=tuple(outcomes), created=tuple(created), extended=tuple(extended))


def _enrol_identity(
    gallery: Gallery,
    identity: str,
    group: list[BulkItem],
    aligned: bool,
    chunk: int,
    progress: Progress | None,
    done: int,
    total: int,
    quality: QualityPolicy | None = ENROLMENT_POLICY,
) -> tuple[list[BulkImageOutcome], bool, bool]:
    """The outcomes of one identity's images, whether this created it, and whether it added templates."""
    try:
        identity = validate_identity_id(identity)
    except InvalidArgumentError as exc:
        if progress is not None:
            progress(done + len(group), total)
        return [BulkImageOutcome(identity, i.source, "error", error=exc.message) for i in group], False, False
    exists = identity in gallery
    enrolled = set(gallery.template_sources(identity).values()) if exists else set()
    rows: list[BulkImageOutcome] = []
    todo = []
    for item in group:
        if item.source in enrolled:
            rows.append(BulkImageOutcome(identity, item.source, "skipped", error="already enrolled"))
        else:
            todo.append(item)
    done += len(rows)
    created = added = False
    matcher = gallery.matcher
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        prepared = matcher.prepare_each([str(i.path) for i in part], "all", max_faces=1, aligned=aligned)
        crops = [p.crops[:1] for p in prepared if isinstance(p, PreparedImage)]
        if crops:
            embeddings, norms = matcher.embed_crops(np.concatenate(crops))
        else:
            embeddings, norms = np.zeros((0, matcher.dim)), np.zeros((0,))
        qualities = assess_enrolment(matcher, prepared, norms)
        sources = [i.source for i in part]
        planned, vectors = plan_enrolment(prepared, embeddings, sources, gallery.multi_face, qualities, quality)
        outcomes: Sequence[ImageOutcome] = planned
        if vectors:  # else nothing to write: the planned outcomes say why
            create = not exists
            outcomes = gallery.enroll_prepared(
                identity,
                prepared,
                embeddings,
                sources=sources,
                model_id=matcher.model_id,
                metadata=part[0].metadata if create else None,
                create=create,
                qualities=qualities,
                quality=quality,
            ).outcomes
            exists = True
            created |= create
            added |= not create
        for o in outcomes:
            status: BulkStatus = o.status
            rows.append(BulkImageOutcome(identity, o.source, status, o.template_id, o.faces_found, o.error))
        done += len(part)
        if progress is not None:
            progress(done, total)
    if not todo and progress is not None:
        progress(done, total)
    order = {item.source: k for k, item in enumerate(group)}
    rows.sort(key=lambda r: order.get(r.source, len(order)))
    return rows, created, added


class _ReportWriter:
    """The per-image report CSV, flushed after each identity."""

    def __init__(self, path: Path) -> None:
        try:
            self._file = path.open("w", newline="", encoding="utf-8")
        except OSError as exc:
            raise InvalidArgumentError(f"cannot write the report {path}: {exc.strerror or exc}") from exc
        self._csv = csv.DictWriter(self._file, fieldnames=REPORT_FIELDS)
        self._csv.writeheader()

    def write(self, rows: Sequence[BulkImageOutcome]) -> None:
        for r in rows:
            self._csv.writerow({k: "" if v is None else v for k, v in r.to_dict().items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


__all__ = ["REPORT_FIELDS", "BulkItem", "enroll_bulk", "plan", "plan_csv", "plan_folder"]
