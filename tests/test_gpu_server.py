"""Where the models really run, as /readyz, the start-up log and ``facematch models check`` report it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from facematch.server.app import create_app
from facematch.server.settings import Settings
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from facematch.cli import app as cli_app


def _ready(client: TestClient) -> dict:  # type: ignore[type-arg]
    for _ in range(600):  # the lifespan loads the models in the background
        r = client.get("/readyz")
        if r.json()["status"] != "loading":
            return r.json()  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("the server did not finish loading")


@pytest.mark.filterwarnings("ignore:Using `httpx`")
def test_readyz_and_log_show_the_active_providers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("FACEMATCH_PROVIDERS", raising=False)
    caplog.set_level(logging.INFO, logger="facematch.server.state")
    with TestClient(create_app(Settings(gallery=tmp_path / "g.fmg"))) as client:
        ready = _ready(client)
    assert ready["ready"] is True
    assert ready["providers"] == {"detector": ["CPUExecutionProvider"], "embedder": ["CPUExecutionProvider"]}
    assert ready["index"].startswith("faiss:flat/fp32") and "@cpu" in ready["index"]  # auto: exact while small
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("providers:")]
    assert logged == [
        "providers: detector ['CPUExecutionProvider'], embedder ['CPUExecutionProvider']; index " + ready["index"]
    ]


@pytest.mark.filterwarnings("ignore:Using `httpx`")
def test_a_provider_that_cannot_run_fails_readiness_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEMATCH_PROVIDERS", "cuda")  # this machine's onnxruntime has no CUDA provider
    with TestClient(create_app(Settings(gallery=None))) as client:
        ready = _ready(client)
        assert client.get("/readyz").status_code == 503
    assert ready["status"] == "failed" and ready["providers"] is None
    assert "CUDAExecutionProvider" in ready["detail"] and ready["detail"].startswith("backend_unavailable")


def test_models_check_prints_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEMATCH_PROVIDERS", raising=False)
    runner = CliRunner()
    out = runner.invoke(cli_app, ["models", "check", "w600k_mbf", "scrfd_500m_bnkps"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith("providers=['CPUExecutionProvider']") for line in lines)
    torch_run = runner.invoke(cli_app, ["models", "check", "w600k_mbf", "--providers", "torch-cpu"])
    assert torch_run.exit_code == 0 and torch_run.output.strip().endswith("providers=['torch-cpu']")
    quiet = runner.invoke(cli_app, ["models", "check", "w600k_mbf", "--no-load"])
    assert quiet.exit_code == 0 and "providers=" not in quiet.output
    missing = runner.invoke(cli_app, ["models", "check", "w600k_mbf", "--providers", "cuda"])
    assert missing.exit_code == 1 and missing.output.startswith("error [backend_unavailable]: ")  # the one style
    assert "CUDAExecutionProvider" in missing.output
