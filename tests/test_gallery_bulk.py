"""Bulk enrolment from a folder or a CSV: real images, real models, re-runs that skip what is enrolled."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facematch.errors import InvalidArgumentError
from facematch.gallery import Gallery
from facematch.gallery.bulk import REPORT_FIELDS, plan_csv
from facematch.gallery.cli import gallery_app


@pytest.fixture()
def folder(tmp_path: Path, celeb24_dir: Path) -> Path:
    """3 identities x 3 aligned crops, plus a non-image file and a blank image."""
    root = tmp_path / "people"
    for name in sorted(p.name for p in celeb24_dir.iterdir() if p.is_dir())[:3]:
        (root / name).mkdir(parents=True)
        for f in sorted((celeb24_dir / name).iterdir())[:3]:
            shutil.copy(f, root / name / f.name)
    (root / "README.txt").write_text("not an identity")  # files at the top are not identities
    (root / sorted(p.name for p in root.iterdir() if p.is_dir())[0] / "notes.txt").write_text("skipped")
    return root


def _report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_folder_enrolment_and_rerun(tmp_path: Path, folder: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    g = Gallery(tmp_path / "g.fmg", matcher=matcher)
    ticks: list[tuple[int, int]] = []
    report = g.enroll_bulk(
        folder, aligned=True, report_path=tmp_path / "r.csv", progress=lambda d, t: ticks.append((d, t))
    )
    assert report.count("enrolled") == 9 and report.created == tuple(names) and report.failed == ()
    assert ticks[-1] == (9, 9) and [d for d, _ in ticks] == sorted(d for d, _ in ticks)
    rows = _report(tmp_path / "r.csv")
    assert tuple(rows[0]) == REPORT_FIELDS and len(rows) == 9
    first = names[0]
    crops = sorted((folder / first).glob("*.png")) or sorted((folder / first).glob("*.jpg"))
    assert rows[0]["source"] == f"{first}/{crops[0].name}" and rows[0]["status"] == "enrolled"
    # the stored source is the relative path; each template is the crop's embedding
    srcs = g.template_sources(first)
    assert sorted(srcs.values()) == sorted(f"{first}/{c.name}" for c in crops)
    want = matcher.embed(crops[0], aligned=True)[0].vector
    tid = next(t for t, s in srcs.items() if s == f"{first}/{crops[0].name}")
    assert float(g._store.embeddings([tid], g.dim)[1][0] @ want) == pytest.approx(1.0, abs=1e-5)
    # a re-run skips everything; a new image is added to its existing identity
    again = g.enroll_bulk(folder, aligned=True)
    assert again.count("skipped") == 9 and again.count("enrolled") == 0 and again.created == again.extended == ()
    shutil.copy(crops[0], folder / names[1] / "extra.png")
    third = g.enroll_bulk(folder, aligned=True)
    assert third.count("enrolled") == 1 and third.extended == (names[1],) and g.get(names[1]).num_templates == 4
    assert len(g) == 3


def test_csv_enrolment_with_metadata_failures_and_bad_ids(tmp_path: Path, wild_dir: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((200, 200, 3), 127, np.uint8))
    rows = [
        ["identity", "path", "metadata"],
        ["obama", str(wild_dir / "obama.jpg"), '{"team": "red"}'],
        ["obama", str(wild_dir / "obama2.jpg"), ""],
        ["nobody", "blank.png", '{"x": 1}'],  # relative to the CSV: no face
        ["biden", "missing.jpg", ""],  # unreadable
        ["biden", str(wild_dir / "biden.jpg"), ""],
        ["bad\u200bid", str(wild_dir / "biden2.jpg"), ""],  # a zero-width space: refused id
    ]
    table = tmp_path / "people.csv"
    with table.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    g = Gallery(tmp_path / "g.fmg", matcher=matcher)
    report = g.enroll_bulk(table, report_path=tmp_path / "r.csv")
    status = {(o.identity_id, o.source): o.status for o in report.outcomes}
    assert status[("obama", str(wild_dir / "obama.jpg"))] == "enrolled"
    assert status[("nobody", "blank.png")] == "no_face"
    assert status[("biden", "missing.jpg")] == "invalid_image"
    assert status[("bad\u200bid", str(wild_dir / "biden2.jpg"))] == "error"
    assert report.created == ("obama", "biden") and "nobody" not in g
    assert g.get("obama").metadata == {"team": "red"} and g.get("obama").num_templates == 2
    assert [r["status"] for r in _report(tmp_path / "r.csv")] == [o.status for o in report.outcomes]
    # images that failed are tried again; enrolled ones are skipped
    again = g.enroll_bulk(table)
    assert again.count("skipped") == 3 and again.count("enrolled") == 0 and len(again.failed) == 3
    for bad in (
        [["a"]],
        [["a", "x.jpg", "not json"]],
        [["a", "x.jpg", "[1]"]],
        [["a", "x.jpg", '{"k": 1}'], ["a", "y.jpg", '{"k": 2}']],
    ):
        with (tmp_path / "bad.csv").open("w", newline="") as f:
            csv.writer(f).writerows(bad)
        with pytest.raises(InvalidArgumentError):
            plan_csv(tmp_path / "bad.csv")
    with pytest.raises(InvalidArgumentError):
        g.enroll_bulk(tmp_path / "nothing-here")


def test_cli_enroll_bulk(tmp_path: Path, folder: Path) -> None:
    runner = CliRunner()
    args = ["enroll-bulk", str(tmp_path / "g.fmg"), str(folder), "--aligned", "--report", str(tmp_path / "r.csv")]
    r = runner.invoke(gallery_app, [*args, "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)
    assert body["enrolled"] == 9 and body["failed"] == 0 and len(body["created"]) == 3
    r = runner.invoke(gallery_app, args)
    assert r.exit_code == 0 and "0 image(s) enrolled, 9 already enrolled" in r.output, r.output
