"""Durability through HTTP: every enrolment answered 201 survives ``kill -9`` of the server."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from _server_util import Server, auth

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")

PEOPLE = {
    "obama": ("obama.jpg", "obama3.jpg"),
    "biden": ("biden.jpg", "biden2.jpg"),
    "kit_harington": ("kit_harington1.jpg", "kit_harington3.jpg"),
    "rose_leslie": ("rose_leslie1.jpg", "rose_leslie2.jpg"),
    "alex_lacamoire": ("alex_lacamoire.png", "alex_lacamoire3.jpg"),
}


def test_enrolments_survive_kill_9(tmp_path: Path, wild_dir: Path) -> None:
    gallery = tmp_path / "people.fmg"
    acked: dict[str, str] = {}  # identity id -> probe image
    srv = Server(tmp_path, gallery=gallery).start()
    stop = threading.Event()
    try:
        with srv.client(headers=auth("enroll")) as c:
            for name, (enrol_img, probe) in PEOPLE.items():
                r = c.post(
                    "/gallery/identities",
                    data={"identity_id": name},
                    files={"images": (enrol_img, (wild_dir / enrol_img).read_bytes())},
                )
                assert r.status_code == 201, r.text
                acked[name] = probe

        def writer() -> None:  # keeps enrolling copies until the server dies under it
            data = (wild_dir / "obama2.jpg").read_bytes()
            i = 0
            with srv.client(headers=auth("enroll"), timeout=10.0) as c:
                while not stop.is_set() and i < 80:  # bounded: k=100 below covers them all
                    try:
                        r = c.post(
                            "/gallery/identities",
                            data={"identity_id": f"copy{i:04d}"},
                            files={"images": ("obama2.jpg", data)},
                        )
                    except httpx.TransportError:
                        return
                    if r.status_code == 201:
                        acked[f"copy{i:04d}"] = "obama4.jpg"
                    i += 1

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(3.0)
        srv.kill9()  # mid-enrolment, no shutdown hook runs
        stop.set()
        t.join(timeout=30)
    finally:
        srv.stop()
    assert len(acked) > len(PEOPLE), "the writer got no enrolment through before the kill"

    with Server(tmp_path, gallery=gallery) as again, again.client(headers=auth("admin")) as c:
        listed, cursor = set(), None
        while True:
            page = c.get("/gallery/identities", params={"limit": 500, **({"cursor": cursor} if cursor else {})})
            listed |= {i["identity_id"] for i in page.json()["items"]}
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        missing = set(acked) - listed
        assert not missing, f"acknowledged enrolments lost: {sorted(missing)[:10]}"
        for name, (_, probe) in PEOPLE.items():
            r = c.post("/identify", files={"image": (probe, (wild_dir / probe).read_bytes())})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["identity_id"] == name
        copies = [n for n in acked if n.startswith("copy")]
        r = c.post(
            "/identify", files={"image": ("obama4.jpg", (wild_dir / "obama4.jpg").read_bytes())}, data={"k": "100"}
        )
        found = {x["identity_id"] for x in r.json()["results"][0]["candidates"]}
        assert set(copies) <= found  # every acknowledged copy is identifiable (obama4 matches obama2)
