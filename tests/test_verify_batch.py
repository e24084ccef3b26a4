"""Batch verification: FaceMatcher.verify_many (SDK), POST /verify/batch (real server), facematch verify --pairs.

Oracle: a loop of FaceMatcher.verify on the same pairs (same similarities, decisions and errors).
"""

from __future__ import annotations

import base64
import csv
import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _server_util import Server, auth

from facematch.batch import check_index_pairs, distinct_images, image_key
from facematch.errors import FacematchError, InvalidArgumentError, InvalidImageError, NoFaceError
from facematch.types import PairResult, VerifyBatchResult

BLANK = np.full((200, 200, 3), 127, np.uint8)  # an image without a face
PHOTOS = ["obama.jpg", "obama2.jpg", "biden.jpg", "biden2.jpg", "kit_harington1.jpg", "kit_harington2.jpg"]


def _loop(matcher: Any, pairs: list[tuple[Any, Any]], **kw: Any) -> list[Any]:
    out: list[Any] = []
    for a, b in pairs:
        try:
            out.append(matcher.verify(a, b, **kw))
        except FacematchError as exc:
            out.append(exc)
    return out


@pytest.fixture(scope="module")
def photos(wild_dir: Path) -> list[Path]:
    return [wild_dir / n for n in PHOTOS]


def test_verify_many_equals_a_loop_of_verify(matcher, photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    bad = b"not an image"
    pairs: list[tuple[Any, Any]] = list(itertools.combinations(photos, 2))
    pairs += [(photos[0], BLANK), (bad, photos[1]), (BLANK, bad), (photos[2], photos[2])]
    res = matcher.verify_many(pairs, fmr=1e-3)
    loop = _loop(matcher, pairs, fmr=1e-3)
    assert isinstance(res, VerifyBatchResult) and len(res) == len(pairs)
    assert res.images == len(photos) + 2 and res.target_fmr == 1e-3
    assert res.threshold == pytest.approx(matcher.threshold_for(1e-3))
    for k, (p, want) in enumerate(zip(res, loop, strict=True)):
        assert isinstance(p, PairResult) and p.index == k
        if isinstance(want, FacematchError):
            assert not p.ok and type(p.error) is type(want), (k, p.error, want)
        else:
            assert p.ok and p.result is not None
            assert p.result.similarity == pytest.approx(want.similarity, abs=1e-5)
            assert p.result.is_match == want.is_match and p.result.threshold == pytest.approx(want.threshold)
            assert p.result.target_fmr == want.target_fmr == 1e-3
            assert np.allclose(p.result.face1.box, want.face1.box, atol=0.05)
    # errors name the side of the pair, and sink only their pairs
    blank_pair, bad_pair, both = res[len(pairs) - 4], res[len(pairs) - 3], res[len(pairs) - 2]
    assert isinstance(blank_pair.error, NoFaceError) and blank_pair.error.message.startswith("image2: ")
    assert isinstance(bad_pair.error, InvalidImageError) and bad_pair.error.details["image"] == "image1"
    assert isinstance(both.error, NoFaceError)  # image1's error wins, as in verify
    assert res[len(pairs) - 1].result.similarity == pytest.approx(1.0, abs=1e-5)
    assert len(res.failed) == 3 and sum(r is None for r in res.results) == 3
    assert json.loads(json.dumps(res.to_dict()))["failed"] == 3


def test_each_distinct_image_is_prepared_once(matcher, photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    calls: list[Any] = []
    prepare = matcher.prepare

    def counting(image: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(image)
        return prepare(image, *args, **kwargs)

    matcher.prepare = counting
    try:
        same = Path(os.path.relpath(photos[0]))  # the same file named another way
        data = photos[1].read_bytes()
        pairs = [(photos[0], photos[1]), (same, photos[2]), (data, photos[0]), (bytes(data), photos[2])]
        res = matcher.verify_many(pairs, chunk=2)
    finally:
        del matcher.prepare
    assert len(calls) == 4  # photos[0], photos[1], photos[2], the bytes of photos[1]
    assert [(p.image1, p.image2) for p in res] == [(0, 1), (0, 2), (3, 0), (3, 2)]
    # the bytes of photos[1] are the same image as the path
    assert res[2].result.similarity == pytest.approx(res[0].result.similarity, abs=1e-6)


def test_verify_many_options_and_bad_input(matcher, photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    res = matcher.verify_many([(photos[0], photos[1])], threshold=0.99)
    assert res.threshold == 0.99 and res.target_fmr is None and not res[0].result.is_match
    empty = matcher.verify_many([])
    assert len(empty) == 0 and empty.images == 0 and empty.failed == ()
    for kw in ({"threshold": 0.3, "fmr": 1e-3}, {"threshold": 2.0}, {"fmr": 0.0}, {"chunk": 0}):
        with pytest.raises(InvalidArgumentError):
            matcher.verify_many([(photos[0], photos[1])], **kw)
    for bad in ("a.jpg", [(photos[0],)], [photos[0]], 3):
        with pytest.raises(InvalidArgumentError):
            matcher.verify_many(bad)  # type: ignore[arg-type]


def test_distinct_images_and_index_pairs(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    images, pairs = distinct_images([("x.jpg", a), (str(Path("x.jpg").resolve()), b"1"), (b"1", a), (a.copy(), a)])
    assert pairs == [(0, 1), (0, 2), (2, 1), (3, 1)] and len(images) == 4
    assert image_key(b"1") == image_key(bytearray(b"1")) != image_key(b"2")
    assert check_index_pairs([[0, 1], (1, 1)], 2) == [(0, 1), (1, 1)]
    for bad in ([[0, 2]], [[0, -1]], [[0]], [[0, 1, 1]], [[True, 0]], [[0.0, 1]], "01"):
        with pytest.raises(InvalidArgumentError):
            check_index_pairs(bad, 2)  # type: ignore[arg-type]


# ---- POST /verify/batch on a real server -------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("batch")
    with Server(tmp, max_batch_images=6, max_batch_pairs=8, batch_max_size=4) as srv:
        yield srv


def _b64(p: Path | bytes) -> str:
    return base64.b64encode(p if isinstance(p, bytes) else p.read_bytes()).decode()


def test_rest_batch_json_equals_the_sdk(server: Server, matcher, photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    images: list[Any] = [*photos[:5], b"not an image"]
    pairs = [[0, 1], [0, 2], [2, 3], [3, 4], [1, 5], [4, 4], [0, 3]]
    sdk = matcher.verify_many([(images[i], images[j]) for i, j in pairs], fmr=1e-3)
    with server.client() as c:
        r = c.post(
            "/verify/batch",
            json={"images": [_b64(p) for p in images], "pairs": pairs, "fmr": 1e-3},
            headers=auth("match"),
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["images"] == 6 and body["failed"] == 1 and body["target_fmr"] == 1e-3
    assert body["threshold"] == pytest.approx(sdk.threshold, abs=1e-6) and body["model_id"] == matcher.model_id
    assert body["timings"]["embed_ms"] is not None
    for got, want in zip(body["results"], sdk, strict=True):
        assert (got["index"], got["image1"], got["image2"]) == (want.index, *pairs[want.index])
        if want.ok:
            assert got["error"] is None and got["is_match"] == want.result.is_match
            assert got["similarity"] == pytest.approx(want.result.similarity, abs=1e-5)
            assert got["face1"]["box"] == pytest.approx([round(float(v), 2) for v in want.result.face1.box], abs=0.05)
        else:
            assert got["is_match"] is None and got["similarity"] is None
            assert got["error"] == {"code": want.error.code, "detail": want.error.message, "reasons": None}


def test_rest_batch_multipart_and_limits(server: Server, photos: list[Path]) -> None:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:3]]
    with server.client(headers=auth("match")) as c:
        r = c.post("/verify/batch", files=files, data={"pairs": "[[0, 1], [1, 2]]", "threshold": "0.3"})
        assert r.status_code == 200, r.text
        assert [x["is_match"] for x in r.json()["results"]] == [True, False] and r.json()["threshold"] == 0.3
        assert r.json()["target_fmr"] is None
        # an image no pair uses is not processed
        r = c.post(
            "/verify/batch", files=[*files, ("images", ("x.jpg", b"junk", "image/jpeg"))], data={"pairs": "[[0,1]]"}
        )
        assert r.status_code == 200 and r.json()["images"] == 2 and r.json()["failed"] == 0
        cases = [
            ({"pairs": "[[0, 3]]"}, 422, "invalid_request"),  # index out of range
            ({"pairs": "[[0, 1, 2]]"}, 422, "invalid_request"),
            ({"pairs": "not json"}, 422, "invalid_request"),
            ({}, 422, "invalid_request"),  # pairs missing
            ({"pairs": json.dumps([[0, 1]] * 9)}, 413, "too_many_pairs"),
            ({"pairs": "[[0, 1]]", "threshold": "0.3", "fmr": "0.001"}, 422, "invalid_argument"),
        ]
        for data, status, code in cases:
            r = c.post("/verify/batch", files=files, data=data)
            assert (r.status_code, r.json()["code"]) == (status, code), (data, r.text)
        many = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in (photos * 2)[:7]]
        r = c.post("/verify/batch", files=many, data={"pairs": "[[0, 1]]"})
        assert (r.status_code, r.json()["code"]) == (413, "too_many_images")
        r = c.post("/verify/batch", json={"images": [_b64(photos[0])] * 7, "pairs": [[0, 1]]})
        assert (r.status_code, r.json()["code"]) == (413, "too_many_images")
    with server.client(headers=auth("enroll")) as c:  # scope match
        assert c.post("/verify/batch", files=files, data={"pairs": "[[0, 1]]"}).status_code == 403


# ---- facematch verify --pairs --------------------------------------------------------------------
def _write_pairs(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _cli(args: list[str]) -> int:
    from facematch.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_pairs_resumes_and_refuses_another_pairs_file(
    tmp_path: Path, wild_dir: Path, matcher, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    pairs = tmp_path / "pairs.csv"
    names = [("obama.jpg", "obama2.jpg", "1"), ("obama.jpg", "biden.jpg", "0"), ("biden.jpg", "labels.csv", "0")]
    names += [("biden.jpg", "biden2.jpg", "1"), ("kit_harington1.jpg", "obama.jpg", "0")]
    _write_pairs(pairs, [["image1", "image2", "same"], *map(list, names)])
    out = tmp_path / "results.csv"
    args = ["verify", "--pairs", str(pairs), "--root", str(wild_dir), "--out", str(out), "--chunk", "2"]
    assert _cli([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"pairs": 5, "skipped": 0, "verified": 5, "matches": 2, "errors": 1, "out": str(out)}
    rows = _rows(out)
    assert [r["pair"] for r in rows] == ["0", "1", "2", "3", "4"] and [r["same"] for r in rows] == [
        "1",
        "0",
        "0",
        "1",
        "0",
    ]
    want = _loop(matcher, [(wild_dir / a, wild_dir / b) for a, b, _ in names])
    for r, w in zip(rows, want, strict=True):
        if isinstance(w, FacematchError):
            assert r["error_code"] == w.code and r["is_match"] == "" and r["error"].startswith("image2: ")
        else:
            assert float(r["similarity"]) == pytest.approx(w.similarity, abs=2e-6) and r["is_match"] == str(
                int(w.is_match)
            )
    full = out.read_bytes()
    # killed mid-row: the cut row is dropped and its pair redone; finished pairs are skipped
    out.write_bytes(full[: full.rindex(b"\n", 0, len(full) - 1) + 12])
    monkeypatch.setitem(sys.modules, "tqdm", None)  # no tqdm: plain progress lines
    assert _cli([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] == 4 and json.loads(captured.out)["verified"] == 1
    assert "verified 5/5 pairs" in captured.err
    assert out.read_bytes() == full
    assert _cli([*args, "--no-progress"]) == 0 and "0 pair(s) verified" in capsys.readouterr().out
    # the results of another pairs file are not mixed in
    _write_pairs(pairs, [["image1", "image2"], ["biden.jpg", "obama.jpg"]])
    assert _cli(args) == 2 and "another pairs file" in capsys.readouterr().err
    # usage errors
    assert _cli(["verify", "--pairs", str(pairs)]) == 2
    assert _cli(["verify", str(wild_dir / "obama.jpg"), "--pairs", str(pairs), "--out", str(out)]) == 2
    assert _cli(["verify", str(wild_dir / "obama.jpg")]) == 2


def test_cli_pairs_without_header(tmp_path: Path, wild_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "p.csv"
    _write_pairs(pairs, [[str(wild_dir / "obama.jpg"), str(wild_dir / "obama3.jpg"), "x"]])
    out = tmp_path / "o.csv"
    assert _cli(["verify", "--pairs", str(pairs), "--out", str(out), "--no-progress", "--threshold", "0.2"]) == 0
    (row,) = _rows(out)
    assert row["column3"] == "x" and row["is_match"] == "1" and row["threshold"] == "0.200000"
