"""``facematch explain`` (the real entry point) and ``facematch eval aligned --explain N``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facematch.eval.explain_page import hardest_pairs

REPO = Path(__file__).resolve().parents[1]


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from facematch.cli import main; main(sys.argv[1:])"
    env = {**os.environ, "FACEMATCH_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, env=env, cwd=REPO
    )


def test_explain_writes_a_figure_and_json(tmp_path: Path, wild_dir: Path) -> None:
    out = tmp_path / "pair.png"
    r = run_cli(
        tmp_path, "explain", str(wild_dir / "obama.jpg"), str(wild_dir / "obama3.jpg"), "--out", str(out), "--json"
    )
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["method"] == "decomposition" and body["is_match"] is True and body["figure"] == str(out)
    assert body["residual"] <= 1e-4 and len(body["explained"]) == 2
    assert [g["region"] for g in body["explained"][0]["regions"]] == ["eyes", "nose", "mouth", "rest"]
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] >= 900 and img.shape[0] >= 600
    # the verdict colour (green for a match) is in the title band
    top = img[: img.shape[0] // 12]
    assert np.any((top[..., 1] > 100) & (top[..., 2] < 60) & (top[..., 0] < 90))


def test_explain_text_output_and_errors(tmp_path: Path, wild_dir: Path) -> None:
    a, b = str(wild_dir / "obama.jpg"), str(wild_dir / "biden.jpg")
    r = run_cli(tmp_path, "explain", a, b, "--method", "occlusion")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("NO MATCH") and "method=occlusion" in first
    assert "obama.jpg: eyes" in r.stdout and "biden.jpg: eyes" in r.stdout
    r = run_cli(tmp_path, "explain", a, b, "--method", "gradcam")
    assert r.returncode == 2 and "method must be one of" in r.stderr
    r = run_cli(tmp_path, "explain", a, b, "--out", str(tmp_path / "missing" / "x.png"))
    assert r.returncode == 1 and "cannot write" in r.stderr
    r = run_cli(tmp_path, "explain", a, str(wild_dir / "nope.jpg"))
    assert r.returncode != 0 and "nope.jpg" in r.stderr


def test_hardest_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 4, 60)
    thr = 0.1
    fnm, fm, n_fnm, n_fm = hardest_pairs(x, y, thr, 5, block=7)
    sims = np.clip(x @ x.T, -1, 1).astype(np.float64)
    i, j = np.triu_indices(60, k=1)
    s, same = sims[i, j], y[i] == y[j]
    miss = sorted((s[k], i[k], j[k]) for k in np.flatnonzero(same & (s < thr)))
    false = sorted((-s[k], i[k], j[k]) for k in np.flatnonzero(~same & (s >= thr)))
    assert n_fnm == len(miss) and n_fm == len(false)
    assert [(a, b) for a, b, _ in fnm] == [(int(a), int(b)) for _, a, b in miss[:5]]
    assert [(a, b) for a, b, _ in fm] == [(int(a), int(b)) for _, a, b in false[:5]]
    assert [v for *_, v in fnm] == pytest.approx([v for v, *_ in miss[:5]])


def test_eval_aligned_explain_page(tmp_path: Path, celeb24_dir: Path) -> None:
    subset = tmp_path / "subset"
    for d in sorted(p for p in celeb24_dir.iterdir() if p.is_dir())[:4]:
        (subset / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:10]:
            (subset / d.name / f.name).symlink_to(f)
    out = tmp_path / "report"
    r = run_cli(tmp_path, "eval", "aligned", str(subset), "--out", str(out), "--explain", "2", "--no-cache",
                "--no-progress", "--no-plots")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    page = rep["explanations"]
    assert page["threshold"] == pytest.approx(0.260985) and "card" in page["threshold_source"]
    assert page["requested"] == 2 and page["n_false_non_matches"] >= 2
    fnm = page["false_non_matches"]
    assert len(fnm) == 2 and fnm[0]["similarity"] <= fnm[1]["similarity"] < page["threshold"]
    assert all(p["identity1"] == p["identity2"] for p in fnm)
    assert len(page["false_matches"]) == min(2, page["n_false_matches"])
    for p in fnm + page["false_matches"]:
        assert p["method"] == "decomposition" and p["residual"] <= 1e-4
        assert (out / p["figure"]).is_file() and cv2.imread(str(out / p["figure"])) is not None
    md = (out / "report.md").read_text()
    assert "## Why did these fail?" in md and f"]({fnm[0]['figure']})" in md
    assert "explained 2 false non-match(es)" in r.stdout
    r = run_cli(tmp_path, "eval", "aligned", str(subset), "--out", str(out), "--explain", "-1", "--no-cache")
    assert r.returncode == 2
