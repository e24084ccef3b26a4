"""facematch.client against a real uvicorn server on 127.0.0.1: the SDK's own results, errors and retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _server_util import KEYS, Server
from facematch.server.errors import ForbiddenError, OverloadedError, TooManyPairsError, UnauthorizedError

from facematch.client import Client, _retry_after, error_classes, error_from_problem
from facematch.errors import (
    DuplicateIdentityError,
    FacematchError,
    IdentityNotFoundError,
    InvalidArgumentError,
    NoFaceError,
    NoTemplatesError,
    TemplateNotFoundError,
)
from facematch.gallery import EnrollReport, Gallery, IdentityInfo, Page
from facematch.types import Detections, IdentifyResult, IdentityVerifyResult, VerifyBatchResult, VerifyResult

BLANK = np.full((200, 200, 3), 127, np.uint8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client")
    settings = {"enable_embed": True, "queue_size": 1, "max_batch_images": 12, "max_batch_pairs": 20}
    with Server(tmp, gallery=tmp / "people.fmg", **settings) as srv:
        yield srv


@pytest.fixture()
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, api_key=KEYS["admin"], timeout=60) as c:
        yield c


class Counting(httpx.HTTPTransport):
    """A real HTTP transport that counts the requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)


def test_matching_returns_the_sdks_results(client: Client, matcher, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = wild_dir / "obama.jpg", wild_dir / "obama2.jpg"
    got, want = client.verify(a, b.read_bytes()), matcher.verify(a, b)
    assert isinstance(got, VerifyResult) and got.is_match == want.is_match
    assert got.similarity == pytest.approx(want.similarity, abs=1e-5) and got.threshold == pytest.approx(want.threshold)
    assert got.target_fmr == want.target_fmr and got.model_id == want.model_id
    assert np.allclose(got.face1.box, want.face1.box, atol=0.01) and got.face2.landmarks.shape == (5, 2)
    assert client.verify(a, b, threshold=0.99).threshold == 0.99
    dets, sdk = client.detect(wild_dir / "group_obama_biden.jpg"), matcher.detect(wild_dir / "group_obama_biden.jpg")
    assert isinstance(dets, Detections) and len(dets) == len(sdk) >= 2
    assert np.allclose(dets.boxes, sdk.sorted_by_area().boxes, atol=0.01)
    (emb,) = client.embed(a)
    assert emb.model_id == matcher.model_id and float(emb.vector @ matcher.embed(a)[0].vector) == pytest.approx(
        1, abs=1e-5
    )


def test_batch_verify_equals_verify_many(client: Client, matcher, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    photos = [wild_dir / n for n in ("obama.jpg", "obama2.jpg", "biden.jpg")]
    pil = Image.open(wild_dir / "biden2.jpg")
    pairs: list[tuple[Any, Any]] = [
        (photos[0], photos[1]),
        (photos[0], photos[2]),
        (photos[2], pil),
        (photos[1], BLANK),
    ]
    got, want = client.verify_many(pairs, fmr=1e-3), matcher.verify_many(pairs, fmr=1e-3)
    assert isinstance(got, VerifyBatchResult) and len(got) == 4 and got.images == want.images == 5
    assert got.threshold == pytest.approx(want.threshold, abs=1e-6) and got.target_fmr == 1e-3
    for g, w in zip(got, want, strict=True):
        assert (g.index, g.image1, g.image2) == (w.index, w.image1, w.image2)
        if w.ok:
            assert g.result.similarity == pytest.approx(w.result.similarity, abs=1e-4)
            assert g.result.is_match == w.result.is_match and g.result.target_fmr == 1e-3
        else:
            assert type(g.error) is type(w.error) is NoFaceError and g.error.message == w.error.message
    by_index = client.verify_batch(photos, [[0, 1], [1, 2]])
    assert [p.result.is_match for p in by_index] == [True, False]
    with pytest.raises(InvalidArgumentError):
        client.verify_batch(photos, [[0, 3]])  # checked before sending
    with pytest.raises(TooManyPairsError):
        client.verify_batch(photos, [[0, 1]] * 21)


def test_gallery_round_trip(client: Client, server: Server, matcher, wild_dir: Path) -> None:  # type: ignore[no-untyped-def]
    report = client.enroll("alice", [wild_dir / "obama.jpg", BLANK, wild_dir / "obama2.jpg"], metadata={"team": "red"})
    assert isinstance(report, EnrollReport) and report.created and len(report.template_ids) == 2
    assert [o.status for o in report.outcomes] == ["enrolled", "no_face", "enrolled"]
    assert report.outcomes[0].source == "obama.jpg" and report.outcomes[0].face is not None
    with pytest.raises(DuplicateIdentityError):
        client.enroll("alice", [wild_dir / "obama.jpg"])
    added = client.add_templates("alice", [wild_dir / "obama4.jpg"])
    assert not added.created and len(added.template_ids) == 1
    client.enroll("bob", [wild_dir / "biden.jpg"])
    info = client.get_identity("alice")
    assert isinstance(info, IdentityInfo) and info.num_templates == 3 and info.metadata == {"team": "red"}
    page = client.list_identities(limit=1)
    assert isinstance(page, Page) and [i.identity_id for i in page.items] == ["alice"] and page.next_cursor
    assert [i.identity_id for i in client.list_identities(cursor=page.next_cursor).items] == ["bob"]
    assert client.set_metadata("alice", {"team": "blue"}).metadata == {"team": "blue"}
    # 1:1 against the enrolled identity: what the SDK's Gallery.verify says on the same gallery
    probe = wild_dir / "obama3.jpg"
    res = client.verify_identity("alice", probe)
    with Gallery(server.gallery, read_only=True, matcher=matcher) as local:
        want = local.verify("alice", probe)
    assert isinstance(res, IdentityVerifyResult) and res.is_match == want.is_match is True
    assert res.similarity == pytest.approx(want.similarity, abs=1e-4) and res.threshold == pytest.approx(want.threshold)
    assert [t.template_id for t in res.templates] == [t.template_id for t in want.templates]
    assert res.metadata == {"team": "blue"} and res.face is not None
    assert not client.verify_identity("bob", probe).is_match
    ident = client.identify(probe, k=2)
    assert isinstance(ident, IdentifyResult) and ident.identity_id == "alice" and ident.gallery_size == 2
    assert [c.identity_id for c in ident.candidates] == ["alice", "bob"]
    with Gallery(server.gallery, read_only=True, matcher=matcher) as local:  # the identify numbers survive HTTP
        want_ident = local.identify(probe, k=2)
    assert ident.comparisons == want_ident.comparisons > 0 and ident.fmr_resolution == want_ident.fmr_resolution
    assert [(c.estimated_fmr_below_resolution, c.estimated_fmr) for c in ident.candidates] == [
        (c.estimated_fmr_below_resolution, pytest.approx(c.estimated_fmr)) for c in want_ident.candidates
    ]
    faces = client.identify_faces(wild_dir / "group_obama_biden.jpg", k=1)
    assert len(faces) >= 2 and all(isinstance(f, IdentifyResult) for f in faces)
    # errors: the SDK's classes
    with pytest.raises(IdentityNotFoundError):
        client.verify_identity("nobody", probe)
    with pytest.raises(NoFaceError):
        client.verify_identity("alice", BLANK)
    (bob_template,) = client.get_identity("bob").template_ids
    with pytest.raises(TemplateNotFoundError):
        client.delete_template("alice", bob_template)
    assert client.delete_template("bob", bob_template) == "bob"
    with pytest.raises(NoTemplatesError):
        client.verify_identity("bob", probe)
    assert client.delete_identity("bob").identity_id == "bob"
    with pytest.raises(IdentityNotFoundError):
        client.get_identity("bob")
    with pytest.raises(InvalidArgumentError):
        client.get_identity("a/b")  # the SDK's identity rule, before sending


def test_auth_errors(server: Server, wild_dir: Path) -> None:
    with Client(server.url, api_key="wrong-key-0123456789") as c, pytest.raises(UnauthorizedError):
        c.list_identities()
    with Client(server.url, api_key=KEYS["match"]) as c:
        with pytest.raises(ForbiddenError):
            c.list_identities()
        assert c.verify_identity("alice", wild_dir / "obama3.jpg").identity_id == "alice"  # scope match
    with Client(server.url) as c:
        assert c.health() and c.ready()


def test_retries_idempotent_calls_on_429_honouring_retry_after(server: Server, wild_dir: Path) -> None:
    """queue_size=1: while one request holds the one inference slot, other inference calls get 429.

    The holder is an occlusion explain (about a hundred embeddings: seconds on a CPU), long
    enough for the calls below on any machine this runs on."""
    photos = [wild_dir / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama4.jpg", "biden.jpg")]
    busy = threading.Event()
    done: dict[str, Any] = {}

    def hold() -> None:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": KEYS["admin"]}, timeout=120) as c:
            busy.set()
            files = {"image1": photos[0].read_bytes(), "image2": photos[1].read_bytes()}
            done["explain"] = c.post("/explain", files=files, data={"method": "occlusion"})

    worker = threading.Thread(target=hold)
    worker.start()
    busy.wait(10)
    with httpx.Client(base_url=server.url) as probe:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "facematch_queue_depth 1.0" not in probe.get("/metrics").text:
            time.sleep(0.02)
    no_retry, once_busy = Counting(), Counting()
    with Client(server.url, api_key=KEYS["admin"], max_retries=0, transport=no_retry) as c:
        with pytest.raises(OverloadedError) as err:
            c.verify(photos[0], photos[1])
        assert err.value.details["retry_after"] == "1" and no_retry.sent == 1
    with Client(server.url, api_key=KEYS["admin"], max_retries=5, transport=once_busy) as c:
        with pytest.raises(OverloadedError):
            c.enroll("carol", [photos[4]])  # creating is not idempotent: never retried
        assert once_busy.sent == 1
    retried = Counting()
    with Client(server.url, api_key=KEYS["admin"], max_retries=30, max_retry_wait=1.0, transport=retried) as c:
        assert c.verify(photos[0], photos[1]).is_match  # waits out the batch
    worker.join(120)
    assert done["explain"].status_code == 200, done["explain"].text
    assert retried.sent >= 2  # at least one 429 before the answer


def test_error_table_and_retry_after() -> None:
    table = error_classes()
    assert table["no_face"] is NoFaceError and table["no_templates"] is NoTemplatesError
    assert table["overloaded"] is OverloadedError and table["too_many_pairs"] is TooManyPairsError
    for code, cls in table.items():
        assert cls.code == code  # built from the classes themselves
    err = error_from_problem(409, {"code": "no_templates", "detail": "x", "details": {"identity_id": "a"}})
    assert isinstance(err, NoTemplatesError) and err.details == {"identity_id": "a"} and err.http_status == 409
    unknown = error_from_problem(405, {"code": "method_not_allowed", "detail": "no"})
    assert type(unknown) is FacematchError and unknown.code == "method_not_allowed" and unknown.http_status == 405
    plain = error_from_problem(502, "<html>bad gateway</html>")
    assert plain.code == "http_502"
    assert _retry_after("3", 0) == 3.0 and _retry_after(None, 2) == 2.0
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert 3.0 < _retry_after(http_date, 0) <= 5.0
    with pytest.raises(InvalidArgumentError):
        Client("http://127.0.0.1:9", max_retries=-1)
