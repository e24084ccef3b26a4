"""The installed ``facematch`` command exits non-zero with one line on stderr whenever a command fails.

These run the real entry point in a subprocess: CliRunner would bypass ``facematch.cli.main``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from facematch.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, package_images: dict[str, Path]) -> Path:
    path = tmp_path_factory.mktemp("cli") / "g.fmg"
    r = run_cli("gallery", "enroll", str(path), "yao", str(package_images["yaoming.jpg"]))
    assert r.returncode == 0, r.stderr
    return path


def test_success_exits_zero(gallery: Path) -> None:
    r = run_cli("gallery", "list", str(gallery), "--json")
    assert r.returncode == 0, r.stderr
    assert "yao" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("gallery", "delete", "{gallery}", "nobody"),
        ("gallery", "enroll", "{gallery}", "yao", "{image}"),
        ("gallery", "list", "{gallery}", "--cursor", "not-a-cursor"),
        ("verify", "{missing}", "{missing}"),
        ("eval", "aligned", "{missing}"),
        ("export", "onnx", "--arch", "no-such-arch", "--checkpoint", "{missing}", "--out", "{tmp}/x.onnx"),
        ("no-such-command",),
    ],
    ids=[
        "gallery-unknown-id",
        "gallery-duplicate",
        "gallery-bad-cursor",
        "verify-missing-file",
        "eval-missing-dir",
        "export-bad-arch",
        "unknown-command",
    ],
)
def test_failures_exit_non_zero(
    gallery: Path, package_images: dict[str, Path], tmp_path: Path, args: tuple[str, ...]
) -> None:
    values = {
        "gallery": str(gallery),
        "image": str(package_images["yaoming.jpg"]),
        "missing": str(tmp_path / "missing.jpg"),
        "tmp": str(tmp_path),
    }
    r = run_cli(*(a.format(**values) for a in args))
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "error" in r.stderr.lower(), r.stderr


def test_a_missing_model_file_is_one_plain_line(tmp_path: Path) -> None:
    pytest.importorskip("onnxconverter_common", reason="`export fp16` needs the export extra (pip install '.[export]')")
    missing = tmp_path / "missing.onnx"
    r = run_cli("export", "fp16", str(missing), str(tmp_path / "out.onnx"))
    assert r.returncode == 2  # an input that is not there: a usage/input error
    assert r.stderr.strip().splitlines() == [f"error [file_not_found]: {missing}: No such file or directory"]
