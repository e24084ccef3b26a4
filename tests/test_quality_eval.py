"""quality-fit and the error-versus-reject sections of `facematch eval`, on real crops and photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from facematch.model_files import load_card


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facematch.cli", *args], capture_output=True, text=True, timeout=900, check=False
    )


@pytest.fixture(scope="module")
def small_set(celeb24_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten identities x eight crops of celeb24, linked (not copied) into a temporary folder."""
    root = tmp_path_factory.mktemp("sets") / "celeb_small"
    for ident in sorted(p for p in celeb24_dir.iterdir() if p.is_dir())[:10]:
        (root / ident.name).mkdir(parents=True)
        for img in sorted(ident.glob("*.png"))[:8]:
            (root / ident.name / img.name).symlink_to(img)
    return root


def test_quality_fit_dry_run_writes_nothing_and_out_writes_a_valid_card(small_set: Path, tmp_path: Path) -> None:
    r = _cli("quality-fit", str(small_set), "--no-cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "log_feature_norm" in r.stdout and "held out (5-fold by identity" in r.stdout and "dry run" in r.stdout
    out = tmp_path / "card.json"
    r = _cli("quality-fit", str(small_set), "--no-cache", "--no-progress", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["written_to"] == str(out) and payload["n_images"] == 80
    card = load_card(out)
    block = card.quality
    assert block is not None and block.set == "celeb_small" and block.n_identities == 10
    assert block.command.endswith(f"--out {out}") and block.held_out is not None
    assert len(block.held_out.fnmr) == len(block.held_out.reject) == 7
    assert card.sha256 == load_card("w600k_mbf").sha256 and card.calibration == load_card("w600k_mbf").calibration
    r = _cli("quality-fit", str(small_set), "--out", str(out), "--in-place")
    assert r.returncode != 0 and "not both" in r.stderr
    r = _cli("quality-fit", str(small_set), "--no-cache", "--feature", "shoe_size")
    assert r.returncode != 0 and "unknown quality features" in r.stderr
    r = _cli("quality-fit", str(small_set), "--no-cache", "--feature", "abs_yaw")  # aligned crops have no 5-point pose
    assert r.returncode != 0 and "--pose106" in r.stderr


def test_eval_aligned_has_an_erc_section_with_a_plot(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    r = _cli("eval", "aligned", str(small_set), "--out", str(out), "--no-cache", "--no-progress", "--mirror")
    assert r.returncode == 0, r.stderr
    assert "quality ERC" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    erc = rep["erc"]
    names = [c["measure"] for c in erc["curves"]]
    assert {"unified", "feature_norm", "sharpness", "mirror_consistency", "random"} <= set(names)
    assert "yaw_deg" not in names  # aligned crops have no 5-point pose
    assert len(erc["reject"]) == 31 and erc["reject"][-1] == pytest.approx(0.3)
    assert erc["threshold_source"].startswith("this set's")  # 2,880 impostor pairs resolve FMR 1e-3
    for c in erc["curves"]:
        assert c["fnmr"][0] == pytest.approx(erc["fnmr_at_0"]) and c["area"] is not None
    assert (out / "erc.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "## Face quality: error versus reject" in md and "![ERC](erc.png)" in md
    no = tmp_path / "no"
    r = _cli("eval", "aligned", str(small_set), "--out", str(no), "--no-cache", "--no-erc", "--no-progress")
    assert r.returncode == 0 and json.loads((no / "report.json").read_text())["erc"] is None


def test_on_its_own_fitting_set_the_unified_curve_is_the_held_out_refit(small_set: Path, tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    assert _cli("quality-fit", str(small_set), "--no-cache", "--no-progress", "--out", str(card)).returncode == 0
    out = tmp_path / "rep"
    r = _cli("eval", "aligned", str(small_set), "--model", str(card), "--out", str(out), "--no-cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    erc = json.loads((out / "report.json").read_text())["erc"]
    curves = {c["measure"]: c for c in erc["curves"]}
    assert "refit" in curves["unified"]["note"] and curves["unified (card)"]["note"] == "in-sample"
    assert "within each of 5 folds" in erc["rejection"]
    held = load_card(card).quality.held_out  # type: ignore[union-attr]
    assert held is not None
    # the refit here is the fit's own held-out result
    assert curves["unified"]["fnmr"][10] == pytest.approx(held.fnmr[held.reject.index(0.1)], abs=1e-6)


def test_eval_pairs_on_wild_has_an_erc_section(wild_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "wild"
    r = _cli("eval", "pairs", str(wild_dir / "labels.csv"), "--out", str(out), "--no-cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    erc = json.loads((out / "report.json").read_text())["erc"]
    assert erc is not None and erc["n_genuine_pairs"] > 20
    names = {c["measure"] for c in erc["curves"]}
    assert {"unified", "inter_ocular_px", "yaw_deg", "visible_fraction", "random"} <= names  # photos: geometry too
    if erc["fnmr_at_0"] == 0.0:
        assert "No genuine comparison fails" in (out / "report.md").read_text()
