"""``facematch verify --pairs pairs.csv --out results.csv``: batch verification, resumable.

The pairs file is a CSV whose first two columns are the images (a header row naming ``image1``
and ``image2``, or ``a`` and ``b``, picks the columns; other columns, e.g. a ``same`` label, are
copied to the output). Relative paths resolve against ``--root`` (default: the CSV's folder).

The output gets one row per pair: ``pair`` (the pair's 0-based row in the pairs file), ``image1``,
``image2``, the copied columns, ``is_match``, ``similarity``, ``threshold``, ``error_code``,
``error``. Rows are appended and flushed a chunk at a time, so a killed run loses at most one
chunk; run the same command again and the pairs already in the output are skipped (a row cut
short by the kill is removed and its pair redone).
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .matcher import FaceMatcher

logger = logging.getLogger(__name__)

RESULT_FIELDS = ("is_match", "similarity", "threshold", "error_code", "error")


@dataclass(frozen=True)
class PairsFile:
    """The pairs of a CSV: image columns as written, resolved paths, and the extra columns per row."""

    image1: list[str]
    image2: list[str]
    root: Path
    extra_names: list[str]
    extra: list[list[str]]

    def __len__(self) -> int:
        return len(self.image1)

    def path(self, name: str) -> str:
        p = Path(name)
        return str(p if p.is_absolute() else self.root / p)


def read_pairs_csv(file: Path, root: Path | None = None) -> PairsFile:
    """The pairs of ``file`` (see the module docstring)."""
    if not file.is_file():
        raise InvalidArgumentError(f"pairs file {file} not found")
    with file.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise InvalidArgumentError(f"{file} holds no pairs")
    head = [c.strip().lower() for c in rows[0]]
    columns = next(
        ((head.index(a), head.index(b)) for a, b in (("image1", "image2"), ("a", "b")) if {a, b} <= set(head)), None
    )
    if columns is not None:
        rows = rows[1:]
        i1, i2 = columns
        extra_idx = [k for k in range(len(head)) if k not in columns]
        extra_names = [head[k] for k in extra_idx]
    else:
        i1, i2 = 0, 1
        width = max(len(r) for r in rows)
        extra_idx = list(range(2, width))
        extra_names = [f"column{k + 1}" for k in extra_idx]
    image1, image2, extra = [], [], []
    for n, row in enumerate(rows, start=2 if columns else 1):
        if len(row) <= max(i1, i2):
            raise InvalidArgumentError(f"{file}:{n}: expected two image columns, got {row}")
        image1.append(row[i1].strip())
        image2.append(row[i2].strip())
        extra.append([row[k] if k < len(row) else "" for k in extra_idx])
    if not image1:
        raise InvalidArgumentError(f"{file} holds no pairs")
    return PairsFile(image1, image2, root if root is not None else file.parent, extra_names, extra)


def done_pairs(out: Path, pairs: PairsFile) -> set[int]:
    """Pairs already in ``out`` (an earlier run); refuses an output written for another pairs file."""
    if not out.is_file() or out.stat().st_size == 0:
        return set()
    done: set[int] = set()
    with out.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"pair", "image1", "image2"} <= set(reader.fieldnames):
            raise InvalidArgumentError(f"{out} exists and is not a facematch results file; pass another --out")
        for row in reader:
            if row.get("error") is None:  # the row's last column is missing: a line cut short, redone
                continue
            try:
                k = int(row["pair"])
            except (TypeError, ValueError):
                continue
            if not (0 <= k < len(pairs)) or (row["image1"], row["image2"]) != (pairs.image1[k], pairs.image2[k]):
                raise InvalidArgumentError(f"{out} was written for another pairs file (pair {k} differs)")
            done.add(k)
    return done


def _progress(total: int, initial: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(advance(n), close()) of a tqdm bar on stderr, or of plain progress lines without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        state = {"done": initial}

        def advance(n: int) -> None:
            state["done"] += n
            typer.echo(f"verified {state['done']}/{total} pairs", err=True)

        return advance, lambda: None
    bar = tqdm(total=total, initial=initial, unit="pair", desc="verify", file=sys.stderr)
    return bar.update, bar.close


def _chunks(todo: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(todo), size):
        yield todo[start : start + size]


def run_pairs(
    matcher: FaceMatcher,
    pairs_csv: Path,
    out: Path,
    *,
    root: Path | None = None,
    threshold: float | None = None,
    fmr: float | None = None,
    aligned: bool = False,
    chunk: int = 512,
    progress: bool = True,
) -> dict[str, Any]:
    """Verify every pair of ``pairs_csv`` not yet in ``out``, appending to ``out``; returns a summary."""
    if chunk < 1:
        raise InvalidArgumentError(f"--chunk must be a positive integer, got {chunk}")
    matcher.resolve_threshold(threshold, fmr)  # refuse bad options before any work
    pairs = read_pairs_csv(pairs_csv, root)
    done = done_pairs(out, pairs)
    todo = [k for k in range(len(pairs)) if k not in done]
    fields = ["pair", "image1", "image2", *pairs.extra_names, *RESULT_FIELDS]
    if out.is_file() and out.stat().st_size:
        _drop_partial_line(out)
    new_file = not out.is_file() or out.stat().st_size == 0
    advance, close = _progress(len(pairs), len(done)) if progress else (lambda n: None, lambda: None)
    counts = {"matches": 0, "errors": 0}
    try:
        with out.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(fields)
            for part in _chunks(todo, chunk):
                batch = [(pairs.path(pairs.image1[k]), pairs.path(pairs.image2[k])) for k in part]
                result = matcher.verify_many(batch, threshold=threshold, fmr=fmr, aligned=aligned)
                for k, p in zip(part, result.pairs, strict=True):
                    row: list[Any] = [k, pairs.image1[k], pairs.image2[k], *pairs.extra[k]]
                    if p.result is not None:
                        counts["matches"] += p.result.is_match
                        row += [
                            int(p.result.is_match),
                            f"{p.result.similarity:.6f}",
                            f"{p.result.threshold:.6f}",
                            "",
                            "",
                        ]
                    else:
                        assert p.error is not None
                        counts["errors"] += 1
                        row += ["", "", f"{result.threshold:.6f}", p.error.code, p.error.message]
                    writer.writerow(row)
                f.flush()
                os.fsync(f.fileno())
                advance(len(part))
    finally:
        close()
    return {"pairs": len(pairs), "skipped": len(done), "verified": len(todo), **counts, "out": str(out)}


def _drop_partial_line(path: Path) -> None:
    """A run killed mid-line leaves a partial last row: cut it off (its pair is redone)."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        while size > 0:
            step = min(size, 4096)
            f.seek(size - step)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(size - step + cut + 1)
                return
            size -= step
        f.truncate(0)  # not one whole line: start over


__all__ = ["RESULT_FIELDS", "PairsFile", "done_pairs", "read_pairs_csv", "run_pairs"]
