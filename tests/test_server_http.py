"""The REST server end to end: a real uvicorn process, real models, real photos, HTTP over loopback."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from _server_util import KEYS, Server, auth


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    with Server(tmp, gallery=tmp / "people.fmg", enable_embed=True, max_faces_per_image=5) as srv:
        yield srv


def files(**paths: Path) -> dict[str, tuple[str, bytes, str]]:
    return {k: (p.name, p.read_bytes(), "image/jpeg") for k, p in paths.items()}


def b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def test_health_ready_and_openapi(server: Server) -> None:
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
        assert ready["ready"] is True and ready["model_id"] == "w600k_mbf"
        assert ready["gallery"]["read_only"] is False
        spec = c.get("/openapi.json").json()
        docs = c.get("/docs")  # Swagger UI from local files: it renders on an air-gapped machine
        assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
        assert "cdn." not in docs.text and "https://" not in docs.text.split("<body>")[0]
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            got = c.get(f"/docs/assets/{asset}")
            assert got.status_code == 200 and len(got.content) > 10_000, asset
    listed = {
        "/verify": "verify",
        "/identify": "identify",
        "/detect": "detect",
        "/embed": "embed",
        "/gallery/identities": None,
        "/gallery/identities/{identity_id}": None,
        "/gallery/identities/{identity_id}/templates": "addTemplates",
        "/gallery/identities/{identity_id}/templates/{template_id}": "deleteTemplate",
    }
    for path, op in listed.items():
        assert path in spec["paths"], path
        if op is not None:
            assert op in {o["operationId"] for o in spec["paths"][path].values()}, (path, op)
    # one canonical copy of each operation: /v1 aliases and the deprecated /faces paths answer, unlisted
    assert not [p for p in spec["paths"] if p.startswith("/v1") or "/faces" in p], sorted(spec["paths"])
    ops = [o["operationId"] for p in spec["paths"].values() for o in p.values()]
    assert len(ops) == len(set(ops)), ops
    body = spec["paths"]["/verify"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert body["multipart/form-data"]["schema"]["required"] == ["image1", "image2"]
    assert "example" in body["application/json"]
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])


def test_verify_same_and_different_people(server: Server, wild_dir: Path) -> None:
    with server.client(headers=auth("match")) as c:
        same = c.post("/verify", files=files(image1=wild_dir / "obama.jpg", image2=wild_dir / "obama2.jpg"))
        diff = c.post("/v1/verify", files=files(image1=wild_dir / "obama.jpg", image2=wild_dir / "biden.jpg"))
    assert same.status_code == 200, same.text
    s = same.json()
    assert s["is_match"] is True and s["similarity"] > s["threshold"] > 0
    assert s["target_fmr"] == pytest.approx(1e-3) and s["model_id"] == "w600k_mbf"
    assert len(s["face1"]["box"]) == 4 and len(s["face1"]["landmarks"]) == 5 and 0 < s["face1"]["score"] <= 1
    assert s["timings"]["total_ms"] > 0 and s["timings"]["embed_ms"] > 0
    d = diff.json()
    assert diff.status_code == 200 and d["is_match"] is False and d["similarity"] < d["threshold"]
    assert "vector" not in same.text and "embedding" not in same.text


def test_verify_json_base64_and_options(server: Server, wild_dir: Path) -> None:
    body = {"image1": b64(wild_dir / "kit_harington1.jpg"), "image2": b64(wild_dir / "kit_harington2.jpg")}
    with server.client(headers=auth("match")) as c:
        r = c.post("/verify", json={**body, "fmr": 1e-4})
        old = c.post("/verify", json={**body, "far": 1e-4})  # the deprecated name of the same field
        both = c.post("/verify", json={**body, "far": 1e-4, "fmr": 1e-4})
        strict = c.post("/verify", json={**body, "threshold": 0.99})
        data_url = c.post("/verify", json={**body, "image1": "data:image/jpeg;base64," + body["image1"]})
    assert r.status_code == 200, r.text
    assert r.json()["is_match"] is True and r.json()["target_fmr"] == pytest.approx(1e-4)
    assert old.status_code == 200 and old.json()["threshold"] == r.json()["threshold"]
    assert both.status_code == 422 and both.json()["code"] == "invalid_argument"
    assert strict.json()["is_match"] is False and strict.json()["threshold"] == 0.99
    assert strict.json()["target_fmr"] is None
    assert data_url.json()["similarity"] == pytest.approx(r.json()["similarity"], abs=1e-5)


def test_verify_agrees_with_the_sdk(server: Server, wild_dir: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    a, b = wild_dir / "rose_leslie1.jpg", wild_dir / "rose_leslie2.jpg"
    with server.client(headers=auth("match")) as c:
        r = c.post("/verify", files=files(image1=a, image2=b)).json()
    sdk = matcher.verify(a, b)
    # the same steps (prepare → embed → compare): identical up to the response's 6-decimal rounding
    assert r["similarity"] == pytest.approx(sdk.similarity, abs=1.5e-6)
    assert r["is_match"] == sdk.is_match and r["threshold"] == pytest.approx(sdk.threshold, abs=1e-6)
    assert r["face1"]["box"] == sdk.to_dict()["face1"]["box"] and r["face2"]["box"] == sdk.to_dict()["face2"]["box"]


def test_gallery_lifecycle_and_identify(server: Server, wild_dir: Path, wild_labels: dict[str, list[str]]) -> None:
    enrol = {
        "obama": ["obama.jpg", "obama2.jpg"],
        "biden": ["biden.jpg"],
        "kit_harington": ["kit_harington1.jpg"],
        "rose_leslie": ["rose_leslie1.jpg"],
        "alex_lacamoire": ["alex_lacamoire.png"],
    }
    with server.client(headers=auth("enroll")) as c:
        ids = []
        for name, imgs in enrol.items():
            parts = [("images", (f, (wild_dir / f).read_bytes(), "image/jpeg")) for f in imgs]
            r = c.post("/gallery/identities", data={"identity_id": name, "metadata": '{"source": "wild"}'}, files=parts)
            assert r.status_code == 201, r.text
            rep = r.json()
            assert rep["created"] is True and len(rep["template_ids"]) == len(imgs)
            assert [o["source"] for o in rep["outcomes"]] == imgs
            ids.append(name)
        dup = c.post("/gallery/identities", json={"identity_id": "obama", "images": [b64(wild_dir / "obama3.jpg")]})
        assert dup.status_code == 409 and dup.json()["code"] == "duplicate_identity"
        assert "add templates to it with POST /gallery/identities/obama/templates" in dup.json()["detail"]
        # add faces: one good image, one without a face (reported, not enrolled)
        text = ("notes.txt", b"not an image", "text/plain")
        add = c.post(
            "/gallery/identities/biden/templates",
            files=[("images", ("biden2.jpg", (wild_dir / "biden2.jpg").read_bytes(), "image/jpeg")), ("images", text)],
        )
        assert add.status_code == 201, add.text
        statuses = [o["status"] for o in add.json()["outcomes"]]
        assert statuses == ["enrolled", "invalid_image"] and add.json()["created"] is False
        timings = add.json()["timings"]  # enrolment runs prepare and embed (through the batcher) like /verify
        assert timings["prepare_ms"] > 0 and timings["embed_ms"] > 0
        old = c.post(  # the deprecated path still works, for one release, and says so
            "/v1/gallery/identities/biden/faces",
            files=[("images", ("biden2.jpg", (wild_dir / "biden2.jpg").read_bytes(), "image/jpeg"))],
        )
        assert old.status_code == 201 and old.headers["deprecation"] == "true"
        assert "templates" in old.headers["link"]
        # pagination walks every identity exactly once
        seen, cursor = [], None
        while True:
            page = c.get("/gallery/identities", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += [i["identity_id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids)
        one = c.get("/v1/gallery/identities/biden").json()
        assert one["num_templates"] == 3 and one["metadata"] == {"source": "wild"}
        assert c.get("/gallery/identities/nobody").status_code == 404
    with server.client(headers=auth("match")) as c:
        for probe in ("obama3.jpg", "obama4.jpg", "kit_harington2.jpg", "rose_leslie2.jpg", "alex_lacamoire2.jpg"):
            r = c.post("/identify", files=files(image=wild_dir / probe), data={"k": "3"})
            assert r.status_code == 200, r.text
            res = r.json()["results"][0]
            assert res["is_unknown"] is False and res["identity_id"] == wild_labels[probe][0], (probe, res)
            assert res["candidates"][0]["estimated_fmr"] < 1e-3 and len(res["candidates"]) <= 3
            assert res["comparisons"] == 8 and r.json()["gallery_size"] == 5  # FPIR scaled by templates
            best = res["candidates"][0]  # far above every calibration impostor: a bound, flagged
            assert best["estimated_fmr_below_resolution"] is True and best["estimated_fmr"] == res["fmr_resolution"]
        unknown = c.post("/identify", json={"image": b64(wild_dir / "lin_manuel_miranda.png")}).json()
        assert unknown["results"][0]["is_unknown"] is True and unknown["results"][0]["identity_id"] is None
        group = c.post("/v1/identify", files=files(image=wild_dir / "group_kit_rose.jpg"), data={"faces": "all"})
        names = {x["identity_id"] for x in group.json()["results"]}
        assert {"kit_harington", "rose_leslie"} <= names
        strict = c.post("/identify", json={"image": b64(wild_dir / "obama3.jpg"), "threshold": 0.99}).json()
        # a match-only key sees no candidate below the threshold, and no metadata (docs/server.md, Scopes)
        assert strict["results"][0]["is_unknown"] is True and strict["results"][0]["candidates"] == []
        assert all(c["metadata"] is None for c in r.json()["results"][0]["candidates"])
    with server.client(headers=auth("admin")) as c:  # gallery read: every candidate, with metadata
        strict = c.post("/identify", json={"image": b64(wild_dir / "obama3.jpg"), "threshold": 0.99}).json()
        assert strict["results"][0]["is_unknown"] is True and len(strict["results"][0]["candidates"]) == 5
        assert strict["results"][0]["candidates"][0]["metadata"] is not None
    with server.client(headers=auth("enroll")) as c:
        tids = c.get("/gallery/identities/biden").json()["template_ids"]
        assert c.delete(f"/gallery/identities/obama/templates/{tids[-1]}").json()["code"] == "template_not_found"
        r = c.delete(f"/gallery/identities/biden/templates/{tids[-1]}")
        assert r.status_code == 200 and r.json() == {"identity_id": "biden", "template_id": tids[-1], "deleted": True}
        old = c.delete(f"/gallery/identities/biden/faces/{tids[-2]}")
        assert old.status_code == 200 and old.json()["template_id"] == tids[-2] and old.headers["deprecation"] == "true"
        assert c.get("/gallery/identities/biden").json()["num_templates"] == 1
        gone = c.delete("/gallery/identities/alex_lacamoire")
        assert gone.status_code == 200 and gone.json()["identity_id"] == "alex_lacamoire"
        assert c.get("/gallery/identities/alex_lacamoire").status_code == 404
    with server.client(headers=auth("match")) as c:
        r = c.post("/identify", files=files(image=wild_dir / "alex_lacamoire2.jpg")).json()
        assert r["results"][0]["identity_id"] != "alex_lacamoire"


def test_detect_limits_faces(server: Server, package_images: dict[str, Path]) -> None:
    with server.client(headers=auth("match")) as c:
        r = c.post("/detect", files=files(image=package_images["players.jpg"]))
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["faces_total"] > 5 and len(d["faces"]) == 5 and d["truncated"] is True  # max_faces_per_image=5
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in d["faces"]]
    assert areas == sorted(areas, reverse=True)
    assert d["image"]["width"] > 0


def test_embed_needs_scope_and_returns_unit_vectors(server: Server, package_images: dict[str, Path]) -> None:
    img = files(image=package_images["yaoming.jpg"])
    with server.client() as c:
        assert c.post("/embed", files=img, headers=auth("match")).status_code == 403
        r = c.post("/embed", files=img, headers={"X-API-Key": KEYS["embed"]})
    assert r.status_code == 200, r.text
    e = r.json()["embeddings"][0]
    assert len(e["vector"]) == r.json()["dim"] == 512
    assert sum(v * v for v in e["vector"]) == pytest.approx(1.0, abs=1e-3)


def test_auth_401_403_and_no_keys_in_logs(server: Server, wild_dir: Path) -> None:
    img = files(image1=wild_dir / "obama.jpg", image2=wild_dir / "obama2.jpg")
    with server.client() as c:
        missing = c.post("/verify", files=img)
        wrong = c.post("/verify", files=img, headers={"Authorization": "Bearer not-a-key-at-all"})
        xkey = c.post("/verify", files=img, headers={"X-API-Key": KEYS["match"]})
        scope = c.get("/gallery/identities", headers=auth("match"))
        admin = c.get("/gallery/identities", headers=auth("admin"))
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    assert missing.headers["content-type"] == "application/problem+json"
    assert "bearer" in missing.headers["www-authenticate"].lower()
    assert wrong.status_code == 401
    assert xkey.status_code == 200
    assert scope.status_code == 403 and scope.json()["code"] == "forbidden"
    assert admin.status_code == 200
    log = server.log()
    for key in [*KEYS.values(), "not-a-key-at-all"]:
        assert key not in log


def test_metrics(server: Server, wild_dir: Path) -> None:
    with server.client(headers=auth("match")) as c:
        c.post("/verify", files=files(image1=wild_dir / "obama.jpg", image2=wild_dir / "obama2.jpg"))
        assert c.get("/gallery/identities/nobody-here", headers=auth("admin")).status_code == 404
        text = c.get("/metrics").text
    assert re.search(r'facematch_http_requests_total\{method="POST",route="/verify",status="200"\} \d', text)
    # routes are labelled by their path template (bounded cardinality), never by the raw path
    assert re.search(r'route="/gallery/identities/\{identity_id\}"', text), text
    assert "nobody-here" not in text
    assert re.search(r"facematch_inference_batch_size_count \d", text)
    assert re.search(r"facematch_gallery_identities \d", text)
    assert "facematch_queue_depth" in text and "facematch_ready 1.0" in text
