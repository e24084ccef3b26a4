"""Evaluation inputs: identity folders, metadata CSVs and pair lists."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


@dataclass(frozen=True)
class IdentitySet:
    """Images of a folder-per-identity data set: ``paths[i]`` shows ``identities[labels[i]]``."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    identities: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def list_identity_dir(root: Path) -> IdentitySet:
    """Scan ``root/<identity>/<image>`` (sorted, hidden files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidArgumentError(f"{root} is not a directory")
    paths: list[Path] = []
    labels: list[int] = []
    identities: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p
            for p in sub.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            continue
        identities.append(sub.name)
        paths.extend(files)
        labels.extend([len(identities) - 1] * len(files))
    if len(identities) < 2:
        raise InvalidArgumentError(
            f"{root} needs at least two identity folders holding images (found {len(identities)})"
        )
    return IdentitySet(root=root, paths=paths, labels=np.asarray(labels, np.int64), identities=identities)


def read_groups(meta_csv: Path, column: str, identities: list[str], id_column: str = "identity") -> dict[str, str]:
    """identity -> group value from a metadata CSV (e.g. ``identity,gender,images``)."""
    path = Path(meta_csv)
    if not path.is_file():
        raise InvalidArgumentError(f"metadata file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        for need in (id_column, column):
            if need not in fields:
                raise InvalidArgumentError(f"{path} has no column {need!r} (columns: {', '.join(fields)})")
        table = {row[id_column].strip(): (row[column] or "").strip() for row in reader}
    missing = [i for i in identities if i not in table or not table[i]]
    if missing:
        logger.warning(
            "%d identities have no %r in %s; they are left out of the fairness report", len(missing), column, path
        )
    return {i: table[i] for i in identities if table.get(i)}


@dataclass(frozen=True)
class PairList:
    """Image pairs to verify: ``same[k]`` says whether ``a[k]`` and ``b[k]`` show one person.

    ``folds`` is the protocol's fold of each pair when the file defines one (LFW
    ``pairs.txt``), else None. ``excluded`` lists input entries that gave no pair,
    with the reason.
    """

    a: list[Path]
    b: list[Path]
    same: np.ndarray
    folds: np.ndarray | None
    source_format: str
    excluded: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.a)


def _truthy(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "y", "t"):
        return True
    if v in ("0", "false", "no", "n", "f", "-1"):
        return False
    raise InvalidArgumentError(f"cannot read {value!r} as same/different (use 1/0 or true/false)")


def _lfw_file(root: Path, name: str, idx: str) -> Path:
    try:
        n = int(idx)
    except ValueError as exc:
        raise InvalidArgumentError(f"LFW pair index {idx!r} is not an integer") from exc
    base = root / name / f"{name}_{n:04d}.jpg"
    if base.exists():
        return base
    others = sorted((root / name).glob(f"{name}_{n:04d}.*"))
    return others[0] if others else base


def read_pairs(file: Path, root: Path | None = None, seed: int = 0) -> PairList:
    """Read a pair list: LFW ``pairs.txt``, a CSV ``a,b,same``, or a labels CSV ``file,identities``.

    Relative image paths resolve against ``root`` (default: the file's folder). A
    labels CSV gives every pair of images that each show exactly one labelled person;
    images with several people or none are listed in ``excluded``.
    """
    file = Path(file)
    if not file.is_file():
        raise InvalidArgumentError(f"pairs file {file} not found")
    root = Path(root) if root is not None else file.parent
    text = file.read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InvalidArgumentError(f"{file} is empty")
    header = [c.strip().lower() for c in next(csv.reader([lines[0]]))]
    if "," in lines[0] and {"file", "identities"} <= set(header):
        return _labels_pairs(file, root)
    if "," in lines[0]:
        return _csv_pairs(file, root, lines, header)
    return _lfw_pairs(file, root, lines)


def _csv_pairs(file: Path, root: Path, lines: list[str], header: list[str]) -> PairList:
    rows = list(csv.reader(lines))
    has_header = len(header) >= 3 and not _looks_like_label(header[2])
    if has_header:
        names = header
        try:
            ia = names.index("a") if "a" in names else 0
            ib = names.index("b") if "b" in names else 1
            isame = names.index("same") if "same" in names else 2
        except ValueError as exc:  # pragma: no cover - index() on present names
            raise InvalidArgumentError(str(exc)) from exc
        rows = rows[1:]
    else:
        ia, ib, isame = 0, 1, 2
    a, b, same = [], [], []
    for k, row in enumerate(rows, start=2 if has_header else 1):
        if len(row) <= max(ia, ib, isame):
            raise InvalidArgumentError(f"{file}:{k}: expected columns a,b,same, got {row}")
        a.append(_resolve(root, row[ia]))
        b.append(_resolve(root, row[ib]))
        same.append(_truthy(row[isame]))
    if not a:
        raise InvalidArgumentError(f"{file} holds no pairs")
    return PairList(a, b, np.asarray(same, bool), None, "csv", [])


def _looks_like_label(value: str) -> bool:
    try:
        _truthy(value)
        return True
    except InvalidArgumentError:
        return False


def _resolve(root: Path, name: str) -> Path:
    p = Path(name.strip())
    return p if p.is_absolute() else root / p


def _lfw_pairs(file: Path, root: Path, lines: list[str]) -> PairList:
    first = lines[0].split()
    folds_n: tuple[int, int] | None = None
    body = lines
    if all(t.isdigit() for t in first) and len(first) in (1, 2):
        body = lines[1:]
        if len(first) == 2:
            folds_n = (int(first[0]), int(first[1]))
    a, b, same = [], [], []
    for k, line in enumerate(body, start=2 if body is not lines else 1):
        t = line.split()
        if len(t) == 3:
            a.append(_lfw_file(root, t[0], t[1]))
            b.append(_lfw_file(root, t[0], t[2]))
            same.append(True)
        elif len(t) == 4:
            a.append(_lfw_file(root, t[0], t[1]))
            b.append(_lfw_file(root, t[2], t[3]))
            same.append(False)
        else:
            raise InvalidArgumentError(f"{file}:{k}: not an LFW pair line (name i j, or name1 i name2 j): {line!r}")
    folds = None
    if folds_n is not None:
        n_folds, per = folds_n
        if n_folds * 2 * per == len(a):
            folds = np.repeat(np.arange(n_folds), 2 * per)
        else:
            logger.warning(
                "%s: header says %d folds x %d x 2 pairs but holds %d; folds reassigned", file, n_folds, per, len(a)
            )
    return PairList(a, b, np.asarray(same, bool), folds, "lfw", [])


def _labels_pairs(file: Path, root: Path) -> PairList:
    with file.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    single: list[tuple[Path, str]] = []
    excluded: list[tuple[str, str]] = []
    for row in rows:
        name = (row.get("file") or "").strip()
        ids = [s.strip() for s in (row.get("identities") or "").split(";") if s.strip()]
        if ids == ["unlabelled"] or not ids:
            excluded.append((name, "no identity label"))
        elif len(ids) > 1:
            excluded.append((name, f"{len(ids)} labelled people: which face is whom is not known"))
        else:
            single.append((_resolve(root, name), ids[0]))
    a, b, same = [], [], []
    for i in range(len(single)):
        for j in range(i + 1, len(single)):
            a.append(single[i][0])
            b.append(single[j][0])
            same.append(single[i][1] == single[j][1])
    if not a:
        raise InvalidArgumentError(f"{file} gives no pairs (needs at least two single-person images)")
    return PairList(a, b, np.asarray(same, bool), None, "labels", excluded)


__all__ = ["IMAGE_EXTENSIONS", "IdentitySet", "PairList", "list_identity_dir", "read_groups", "read_pairs"]
