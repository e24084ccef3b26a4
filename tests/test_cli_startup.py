"""Start-up of the command line: the embedder's batch dimension is rewritten once per model, not per load.

(How fast ``facematch verify`` starts is measured by ``benchmarks/bench_cli.py``, not by a timed test.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facematch import runtime
from facematch.model_files import file_sha256, load_card, resolve_model_path


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEMATCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture(scope="module")
def embedder_path() -> Path:
    return resolve_model_path(load_card("w600k_mbf"))


def test_the_rewrite_is_cached_once_and_equals_the_in_memory_one(cache: Path, embedder_path: Path) -> None:
    sha = file_sha256(embedder_path)
    first = runtime.batch_dynamic_model(embedder_path, sha)
    cached = cache / f"{sha}.batch-v{runtime.BATCH_REWRITE_VERSION}.onnx"
    assert first == str(cached) and cached.is_file()
    assert cached.read_bytes() == runtime.make_batch_dynamic(embedder_path.read_bytes())
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # written through a temporary file
    mtime = cached.stat().st_mtime_ns
    assert runtime.batch_dynamic_model(embedder_path, sha) == str(cached) and cached.stat().st_mtime_ns == mtime

    x = np.random.default_rng(0).standard_normal((5, 3, 112, 112)).astype(np.float32)
    from_cache = runtime.create_session(cached, providers=["cpu"])
    in_memory = runtime.create_session(embedder_path.read_bytes(), providers=["cpu"], dynamic_batch=True)
    name = from_cache.get_inputs()[0].name
    np.testing.assert_array_equal(from_cache.run(None, {name: x})[0], in_memory.run(None, {name: x})[0])
    assert from_cache.get_outputs()[0].shape[0] == "batch"


def test_a_model_that_needs_no_rewrite_is_marked_and_loaded_as_is(
    cache: Path, embedder_path: Path, tmp_path: Path
) -> None:
    already = tmp_path / "dynamic.onnx"
    already.write_bytes(runtime.make_batch_dynamic(embedder_path.read_bytes()))  # batch already symbolic
    assert runtime.batch_dynamic_model(already) == str(already)
    assert [p.suffix for p in cache.iterdir()] == [".same"]
    assert runtime.batch_dynamic_model(already) == str(already)


def test_an_unwritable_cache_falls_back_to_the_in_memory_rewrite(
    cache: Path, embedder_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: Path, data: bytes) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runtime, "_write_atomic", refuse)
    out = runtime.batch_dynamic_model(embedder_path)
    assert isinstance(out, bytes) and out == runtime.make_batch_dynamic(embedder_path.read_bytes())


def test_verify_does_not_import_onnx_once_the_model_is_cached(tmp_path: Path, wild_dir: Path) -> None:
    code = (
        "import sys\nfrom facematch.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    code = e.code\nprint('onnx' in sys.modules, 'ml_dtypes' in sys.modules, code)"
    )
    env = {**os.environ, "FACEMATCH_CACHE_DIR": str(tmp_path / "cache")}
    args = ["verify", str(wild_dir / "obama.jpg"), str(wild_dir / "obama2.jpg")]
    runs = [
        subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
        for _ in range(2)
    ]
    first, second = (r.stdout.strip().splitlines() for r in runs)
    assert first[0].startswith("MATCH") and first[-1] == "True True 0"  # the first run rewrites (imports onnx)
    assert second[0] == first[0] and second[-1] == "False False 0"  # later runs read the cached copy


def test_one_shot_commands_do_not_spin_and_batch_commands_do() -> None:
    """A one-shot command's idle ONNX Runtime threads sleep (spinning takes the core the next step needs)."""
    from facematch._cliutil import matcher_for

    def spins(m: object) -> list[str]:
        out = []
        for model in (m.detector, m.embedder):  # type: ignore[attr-defined]
            opts = model.session.get_session_options()
            try:
                out.append(opts.get_session_config_entry("session.intra_op.allow_spinning"))
            except RuntimeError:  # not set: ONNX Runtime's default, spinning allowed
                out.append("default")
        return out

    assert spins(matcher_for(None, None)) == ["0", "0"]
    assert spins(matcher_for(None, None, spin_wait=True)) == ["default", "default"]


@pytest.mark.parametrize("preset", [None, "logfire"])
def test_the_cli_skips_pydantic_plugin_discovery_unless_the_caller_chose(tmp_path: Path, preset: str | None) -> None:
    code = (
        "import os, sys\nfrom facematch.cli import main\ntry:\n    main(['models', 'list', '--json'])\n"
        "except SystemExit as e:\n    pass\nprint(os.environ.get('PYDANTIC_DISABLE_PLUGINS'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if preset is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = preset
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == (preset or "__all__")
