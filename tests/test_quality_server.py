"""Face quality over HTTP: a real uvicorn server, real models, real photos on loopback."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from _server_util import Server, auth


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("quality-server")
    with Server(tmp, gallery=tmp / "people.fmg", max_faces_per_image=5) as srv:
        yield srv


@pytest.fixture(scope="module")
def blurred(wild_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("blur") / "obama_blurred.png"
    cv2.imwrite(str(out), cv2.GaussianBlur(cv2.imread(str(wild_dir / "obama.jpg")), (0, 0), 6.0))
    return out


def files(**paths: Path) -> dict[str, tuple[str, bytes, str]]:
    return {k: (p.name, p.read_bytes(), "application/octet-stream") for k, p in paths.items()}


def b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def test_detect_verify_and_identify_answer_with_quality(server: Server, wild_dir: Path) -> None:
    with server.client(headers=auth("admin")) as c:
        d = c.post("/detect", files=files(image=wild_dir / "group_two_people.jpg")).json()
        assert len(d["faces"]) >= 2
        for face in d["faces"]:
            q = face["quality"]
            assert q["unified_status"] == "scored" and 0 <= q["unified"] <= 100
            assert q["inter_ocular_px"] > 0 and q["feature_norm"] > 0 and q["pose_method"] == "5-point"
        bare = c.post("/detect", files=files(image=wild_dir / "group_two_people.jpg"), data={"quality": "false"}).json()
        assert [f["box"] for f in bare["faces"]] == [f["box"] for f in d["faces"]]
        assert all(f["quality"] is None for f in bare["faces"])
        empty = c.post("/detect", json={"image": b64(wild_dir / "rgba_32bit.png")})
        assert empty.status_code == 200 and empty.json()["faces"][0]["quality"]["unified"] is not None

        v = c.post("/verify", files=files(image1=wild_dir / "obama.jpg", image2=wild_dir / "obama2.jpg")).json()
        assert v["is_match"] and v["face1"]["quality"]["unified"] > 0 and v["face2"]["quality"]["sharpness"] > 0

        r = c.post("/gallery/identities", data={"identity_id": "obama"}, files=files(images=wild_dir / "obama.jpg"))
        assert r.status_code == 201, r.text
        assert r.json()["outcomes"][0]["quality"]["unified"] is not None
        i = c.post("/identify", files=files(image=wild_dir / "obama2.jpg")).json()
        assert i["results"][0]["face"]["quality"]["unified"] is not None and i["results"][0]["refused"] == []


def test_probe_gate_and_its_overrides(server: Server, wild_dir: Path, blurred: Path) -> None:
    with server.client(headers=auth("match")) as c:
        pair = files(image1=wild_dir / "obama.jpg", image2=wild_dir / "obama2.jpg")
        r = c.post("/verify", files=pair, data={"min_quality": "100"})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        p = r.json()
        assert p["code"] == "low_quality" and p["details"]["image"] == "image1"
        (reason,) = p["details"]["reasons"]
        assert reason["component"] == "unified" and reason["limit"] == 100.0 and reason["value"] < 100
        r = c.post("/verify", json={"image1": b64(wild_dir / "obama.jpg"), "image2": b64(blurred), "min_sharpness": 8})
        assert r.status_code == 422 and r.json()["details"]["image"] == "image2"
        # the lenient default lets the soft probe through; quality_policy=enrolment does not
        assert c.post("/verify", files=files(image1=wild_dir / "obama.jpg", image2=blurred)).status_code == 200
        r = c.post(
            "/verify", files=files(image1=wild_dir / "obama.jpg", image2=blurred), data={"quality_policy": "enrolment"}
        )
        assert r.status_code == 422 and r.json()["code"] == "low_quality"
        for bad in ({"min_quality": "150"}, {"max_abs_yaw": "-1"}, {"quality_policy": "paranoid"}):
            r = c.post("/verify", files=pair, data=bad)
            assert r.status_code == 422 and r.json()["code"] == "invalid_request", bad
        # identify: the largest face is refused with 422; with faces=all a refused face is reported, not searched
        r = c.post("/identify", files=files(image=blurred), data={"quality_policy": "enrolment"})
        assert r.status_code == 422 and r.json()["code"] == "low_quality"
        r = c.post(
            "/identify",
            files=files(image=wild_dir / "group_two_people.jpg"),
            data={"faces": "all", "min_face_size": "152"},
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        refused = [x for x in results if x["refused"]]
        searched = [x for x in results if not x["refused"]]
        assert refused and searched
        assert all(x["candidates"] == [] and x["is_unknown"] for x in refused)
        assert refused[0]["refused"][0]["component"] == "face_size_px"


def test_enrolment_gate_answers_422_with_reasons_and_stores_nothing(
    server: Server, wild_dir: Path, blurred: Path
) -> None:
    with server.client(headers=auth("enroll")) as c:
        r = c.post("/gallery/identities", data={"identity_id": "soft"}, files=files(images=blurred))
        assert r.status_code == 422, r.text
        p = r.json()
        assert p["code"] == "low_quality" and p["details"]["reasons"]
        assert p["details"]["report"]["outcomes"][0]["status"] == "low_quality"
        assert p["details"]["report"]["outcomes"][0]["reasons"][0]["message"]
        assert c.get("/gallery/identities/soft").status_code == 404
        # a mixed upload: the good image is enrolled, the soft one reported
        both = [
            ("images", ("a.jpg", (wild_dir / "biden.jpg").read_bytes(), "image/jpeg")),
            ("images", ("b.png", blurred.read_bytes(), "image/png")),
        ]
        r = c.post("/gallery/identities", data={"identity_id": "biden"}, files=both)
        assert r.status_code == 201, r.text
        assert [o["status"] for o in r.json()["outcomes"]] == ["enrolled", "low_quality"]
        before = c.get("/gallery/identities/biden").json()["template_ids"]
        r = c.post("/gallery/identities/biden/templates", json={"images": [b64(blurred)]})
        assert r.status_code == 422 and r.json()["code"] == "low_quality"
        assert c.get("/gallery/identities/biden").json()["template_ids"] == before
        # per-request overrides: none lets it in; a validated limit keeps even a good photo out
        r = c.post("/gallery/identities/biden/templates", json={"images": [b64(blurred)], "quality_policy": "none"})
        assert r.status_code == 201 and r.json()["outcomes"][0]["status"] == "enrolled"
        r = c.post(
            "/gallery/identities/biden/templates",
            files=files(images=wild_dir / "biden2.jpg"),
            data={"min_inter_ocular": "5000"},
        )
        assert r.status_code == 422 and r.json()["details"]["reasons"][0]["component"] == "inter_ocular_px"
        r = c.post("/gallery/identities", json={"identity_id": "x", "images": [b64(blurred)], "min_quality": -1})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_openapi_documents_quality_with_units(server: Server) -> None:
    with server.client() as c:
        spec = c.get("/openapi.json").json()
    q = spec["components"]["schemas"]["QualityOut"]["properties"]
    assert "px" in q["inter_ocular_px"]["description"] and "grey levels" in q["sharpness"]["description"]
    assert "unified" in q and "unified_status" in q
    body = spec["paths"]["/verify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"min_quality", "min_face_size", "quality_policy"} <= set(body)
