"""The command line a person meets: one error style everywhere, flags that are flags, lazy sub-commands.

Error-style tests run the installed ``facematch`` entry point in a subprocess (``CliRunner``
would bypass the console script); the help and option-table checks run in-process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from facematch._cliutil import EXIT_FAILURE, EXIT_USAGE, describe, load_command, wants_json
from facematch.cli import LAZY_COMMANDS, app
from facematch.errors import InvalidImageError, NoFaceError

ENTRY = str(Path(sys.executable).parent / "facematch")
LINE = re.compile(r"^error \[(?P<code>[a-z_]+)\]: (?P<rest>.+)$")
runner = CliRunner()


def run_cli(*args: str, env: dict[str, str] | None = None, pre: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script; ``pre`` runs Python first (e.g. to hide a module) through ``python -c``."""
    if pre is None:
        argv = [ENTRY, *args]
    else:
        code = f"import sys; {pre}; from facematch.cli import main; main(sys.argv[1:])"
        argv = [sys.executable, "-c", code, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def error_of(r: subprocess.CompletedProcess[str], as_json: bool) -> dict[str, Any]:
    """Check the one style: exactly one ``error [code]: ...`` line on stderr, and under --json the same error
    as the only thing on stdout. Returns ``{"code", "message", "path"?}`` (from the JSON, or the line)."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, r.stderr
    m = LINE.match(lines[0])
    assert m, lines[0]
    if not as_json:
        assert r.stdout == "", r.stdout
        return {"code": m["code"], "line": lines[0]}
    body = json.loads(r.stdout)
    assert set(body) == {"error"} and body["error"]["code"] == m["code"], body
    err = body["error"]
    expected = f"error [{err['code']}]: " + (f"{err['path']}: " if "path" in err else "") + err["message"]
    assert " ".join(expected.split()) == lines[0]  # the line is the JSON error, word for word
    return {**err, "line": lines[0]}


# ---- the error style, per command family, with and without --json --------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, package_images: dict[str, Path]) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli-inputs")
    text = tmp / "notes.txt"
    text.write_text("not an image")
    blank = tmp / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((240, 320, 3), 127, np.uint8))
    gallery = tmp / "g.fmg"
    r = run_cli("gallery", "enroll", str(gallery), "yao", str(package_images["yaoming.jpg"]))
    assert r.returncode == 0, r.stderr
    return {"text": text, "blank": blank, "gallery": gallery, "face": package_images["yaoming.jpg"], "tmp": tmp}


CASES = {
    # family: (argv with {placeholders}, exit status, code, the path the error names or None)
    "verify": (["verify", "{face}", "{text}"], EXIT_USAGE, "invalid_image", "{text}"),
    "detect": (["detect", "{text}"], EXIT_USAGE, "invalid_image", "{text}"),
    "embed": (["embed", "{blank}"], EXIT_USAGE, "no_face", "{blank}"),
    "models": (["models", "check", "no_such_model"], EXIT_FAILURE, "model_not_found", None),
    "gallery": (["gallery", "enroll", "{gallery}", "yao", "{face}"], EXIT_USAGE, "duplicate_identity", None),
    "gallery-identify": (["gallery", "identify", "{gallery}", "{blank}"], EXIT_USAGE, "no_face", "blank.png"),
    "eval": (["eval", "aligned", "{tmp}/missing", "--no-cache"], EXIT_USAGE, "invalid_argument", None),
    "calibrate": (["calibrate", "{tmp}/missing", "--no-cache"], EXIT_USAGE, "invalid_argument", None),
    "export": (
        ["export", "fp16", "{tmp}/missing.onnx", "{tmp}/out.onnx"],
        EXIT_USAGE,
        "file_not_found",
        "{tmp}/missing.onnx",
    ),
}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("family", list(CASES))
def test_every_command_family_reports_errors_in_one_style(inputs: dict[str, Path], family: str, as_json: bool) -> None:
    argv, status, code, path = CASES[family]
    if family == "export":
        pytest.importorskip("onnxconverter_common", reason="`export fp16` needs the export extra")
    fill = {k: str(v) for k, v in inputs.items()}
    r = run_cli(*(a.format(**fill) for a in argv), *(["--json"] if as_json else []))
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    err = error_of(r, as_json)
    assert err["code"] == code
    if path is not None:
        assert err["line"].startswith(f"error [{code}]: {path.format(**fill)}: "), err["line"]
        if as_json:
            assert err["path"] == path.format(**fill)
    if family == "gallery":  # the action named as the CLI spells it
        assert "facematch gallery enroll" in err["line"] and "--add" in err["line"]


def test_serve_reports_bad_settings_in_the_style(tmp_path: Path) -> None:
    r = run_cli("serve", "--workers", "2", "--gallery", str(tmp_path / "g.fmg"))
    assert r.returncode == EXIT_USAGE
    err = error_of(r, as_json=False)
    assert err["code"] == "invalid_argument" and "--read-only" in err["line"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["verify", "only-one.jpg"], "Missing argument 'IMAGE2'; see 'facematch verify --help'"),
        (["verify", "a.jpg", "b.jpg", "--json=true"], "Option '--json' does not take a value"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["gallery", "identify", "g.fmg", "x.jpg", "--k", "lots"], "Invalid value for '--k'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(argv: list[str], needle: str) -> None:
    for as_json in (False, True):
        r = run_cli(*argv, *(["--json"] if as_json else []))
        assert r.returncode == EXIT_USAGE, r.stderr
        err = error_of(r, as_json)
        assert err["code"] == "usage_error" and needle in err["line"], err["line"]


@pytest.mark.parametrize(
    ("hide", "argv", "extra"),
    [
        ("torch", ["export", "onnx", "--arch", "mbf", "--checkpoint", "{ckpt}", "--out", "{out}"], "export"),
        ("uvicorn", ["serve", "--port", "0"], "server"),
        (
            "matplotlib",
            [
                "calibrate",
                "{faces}",
                "--fmr",
                "0.1",
                "--default-fmr",
                "0.1",
                "--no-cache",
                "--no-progress",
                "--plot",
                "{png}",
            ],
            "eval",
        ),
    ],
    ids=["export-without-torch", "serve-without-uvicorn", "calibrate-plot-without-matplotlib"],
)
def test_a_missing_extra_names_its_install_line(
    tmp_path: Path, celeb24_dir: Path, hide: str, argv: list[str], extra: str
) -> None:
    faces = tmp_path / "faces"
    for ident in sorted(p for p in celeb24_dir.iterdir() if p.is_dir())[:3]:
        (faces / ident.name).mkdir(parents=True)
        for f in sorted(ident.glob("*.png"))[:4]:
            (faces / ident.name / f.name).symlink_to(f)
    (tmp_path / "x.pt").write_bytes(b"")
    fill = {
        "ckpt": str(tmp_path / "x.pt"),
        "out": str(tmp_path / "x.onnx"),
        "faces": str(faces),
        "png": str(tmp_path / "c.png"),
    }
    r = run_cli(*(a.format(**fill) for a in argv), pre=f"sys.modules[{hide!r}] = None")
    assert r.returncode == EXIT_FAILURE, r.stderr
    err = error_of(r, as_json=False)
    assert err["code"] == "missing_dependency"
    assert err["line"] == f"error [missing_dependency]: {hide} is not installed: pip install 'facematch[{extra}]'"


def test_checks_that_fail_exit_1_after_their_report() -> None:
    r = run_cli("models", "check", "w600k_mbf", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["status"] == "ok"


# ---- in-process: the error helper, flags, help --------------------------------------------------
def test_describe_maps_errors_to_codes_paths_and_exit_statuses() -> None:
    e = describe(NoFaceError("no face found in the image").about("a.jpg"))
    assert e is not None and (e.code, e.path, e.message, e.exit_code) == (
        "no_face",
        "a.jpg",
        "no face found in the image",
        2,
    )
    assert e.line() == "error [no_face]: a.jpg: no face found in the image"
    assert e.to_dict() == {"error": {"code": "no_face", "message": "no face found in the image", "path": "a.jpg"}}
    missing = describe(FileNotFoundError(2, "No such file or directory", "x.onnx"))
    assert missing is not None and (missing.code, missing.path, missing.exit_code) == ("file_not_found", "x.onnx", 2)
    err = ModuleNotFoundError("No module named 'tqdm'", name="tqdm")
    mod = describe(err)
    assert (
        mod is not None and mod.message == "tqdm is not installed: pip install 'facematch[eval]'" and mod.exit_code == 1
    )
    bug = describe(ZeroDivisionError("division by zero"))
    assert bug is not None and bug.code == "internal_error" and bug.exit_code == 1 and "-v" in bug.message
    bad_image = describe(InvalidImageError("x"))
    assert bad_image is not None and bad_image.exit_code == 2
    assert describe(SystemExit(0)) is None
    assert wants_json(["verify", "a", "b", "--json"]) and not wants_json(["embed", "--", "--json"])


def test_install_hints_name_extras_that_exist() -> None:
    import tomllib

    from facematch.extras import EXTRA_OF_MODULE, install_hint

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for module, extra in EXTRA_OF_MODULE.items():
        assert extra in extras, (module, extra)
        assert f"'facematch[{extra}]'" in install_hint(module)
    assert install_hint("matplotlib.pyplot") == "pip install 'facematch[eval]'"
    assert "tensorrt" in install_hint("tensorrt") and "facematch[" not in install_hint("tensorrt")


def _all_commands() -> list[tuple[str, Any]]:
    """Every command of the tree, lazy ones loaded: (command path, click command)."""
    import typer

    out: list[tuple[str, Any]] = []

    def walk(path: str, cmd: Any) -> None:
        out.append((path, cmd))
        names = cmd.list_commands(None) if hasattr(cmd, "list_commands") else []
        for name in names:
            walk(f"{path} {name}", cmd.get_command(None, name))

    walk("facematch", typer.main.get_command(app))
    return out


def test_boolean_options_are_flags_everywhere() -> None:
    commands = _all_commands()
    assert {"facematch gallery identify", "facematch eval pairs", "facematch export onnx", "facematch serve"} <= {
        p for p, _ in commands
    }
    for path, cmd in commands:
        for param in cmd.params:
            if getattr(getattr(param, "type_descriptor", None), "annotation", None) is bool:
                assert param.is_flag and not param.nargs > 1, (path, param.name)  # takes no value
        res = runner.invoke(app, [*path.split()[1:], "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert "<bool>" not in res.output, (path, res.output)
        if any(p.name == "as_json" for p in cmd.params):
            assert re.search(r"^\s+--json\s", res.output, re.M), (path, res.output)


def test_lazy_commands_are_listed_from_the_table_and_match_their_help() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in ("verify", "detect", "embed", "models", "demo", *LAZY_COMMANDS):
        assert re.search(rf"^\s+{name}\s", res.output, re.M), name
    assert "Exit status:" in res.output and "130" in res.output
    for name, entry in LAZY_COMMANDS.items():
        cmd = load_command(name, entry)
        assert cmd.name == name
        assert (cmd.help or "").split("\n\n")[0].strip() == entry.help, name


def test_help_imports_no_sub_command_and_no_numpy() -> None:
    code = (
        "import sys\nfrom facematch.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('numpy', 'onnx', 'onnxruntime', 'cv2', 'facematch.gallery', 'facematch.eval', 'facematch.export', "
        "'facematch.server')\n"
        "print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy)))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
