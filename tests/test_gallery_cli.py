"""``facematch gallery`` commands through typer's runner, on real photos from the model pack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from facematch.gallery.cli import gallery_app

app = typer.Typer()
app.add_typer(gallery_app, name="gallery")
runner = CliRunner()


def test_cli_enroll_identify_list_delete_info(tmp_path: Path, package_images) -> None:  # type: ignore[no-untyped-def]
    if "yaoming.jpg" not in package_images:
        pytest.skip("yaoming.jpg not in the model pack")
    g = str(tmp_path / "cli.fmg")
    yao = str(package_images["yaoming.jpg"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    r = runner.invoke(app, ["gallery", "enroll", g, "yao", yao, str(bad), "--metadata", '{"team": "red"}', "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert [o["status"] for o in report["outcomes"]] == ["enrolled", "invalid_image"]
    r = runner.invoke(app, ["gallery", "enroll", g, "yao", yao])
    assert r.exit_code == 2 and "duplicate_identity" in r.output and "gallery enroll" in r.output
    r = runner.invoke(app, ["gallery", "identify", g, yao, "--threshold", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["identity_id"] == "yao"
    r = runner.invoke(app, ["gallery", "identify", g, str(bad), "--threshold", "0.5"])
    assert r.exit_code == 2 and "invalid_image" in r.output
    r = runner.invoke(app, ["gallery", "list", g, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["items"][0]["metadata"] == {"team": "red"}
    r = runner.invoke(app, ["gallery", "info", g, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["identities"] == 1
    r = runner.invoke(app, ["gallery", "delete", g, "yao"])
    assert r.exit_code == 0 and "deleted yao" in r.output
    r = runner.invoke(app, ["gallery", "delete", g, "yao"])
    assert r.exit_code == 2 and "identity_not_found" in r.output
    r = runner.invoke(app, ["gallery", "info", str(tmp_path / "nope.fmg")])
    assert r.exit_code == 2 and "no gallery" in r.output
