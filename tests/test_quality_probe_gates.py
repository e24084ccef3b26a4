"""The probe quality gate on batch verification and 1:1 gallery verification: SDK and a real server.

Real low-quality probes are degraded copies of a wild photo: ``obama.jpg`` scaled to 6 % (68x55 px:
the face is found, 6.6 px between the eyes, below the probe policy's 10) and blurred with sigma 14
(found, sharpness 1.9, below the probe policy's 3).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from _server_util import KEYS, Server, auth

from facematch import FaceMatcher
from facematch.batch import embedded_images
from facematch.client import Client
from facematch.errors import InvalidArgumentError
from facematch.gallery import Gallery
from facematch.quality import PROBE_POLICY, LowQualityError, QualityPolicy


@pytest.fixture(scope="module")
def tiny(wild_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "obama_tiny.png"
    img = cv2.imread(str(wild_dir / "obama.jpg"))
    cv2.imwrite(str(out), cv2.resize(img, None, fx=0.06, fy=0.06, interpolation=cv2.INTER_AREA))
    return out


@pytest.fixture(scope="module")
def smeared(wild_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "obama_smeared.png"
    cv2.imwrite(str(out), cv2.GaussianBlur(cv2.imread(str(wild_dir / "obama.jpg")), (0, 0), 14.0))
    return out


def _components(reasons: list[dict[str, object]]) -> set[object]:
    return {r["component"] for r in reasons}


# ---- SDK ------------------------------------------------------------------------------------
def test_gallery_identify_gates_the_probe(
    tmp_path: Path, matcher: FaceMatcher, wild_dir: Path, tiny: Path, smeared: Path
) -> None:
    with Gallery.open(tmp_path / "g.fmg", create=True, matcher=matcher) as g:
        g.enroll("obama", [wild_dir / "obama.jpg"])
        g.enroll("biden", [wild_dir / "biden.jpg"])
        good = g.identify(wild_dir / "obama2.jpg")
        assert good.candidates[0].identity_id == "obama" and good.quality is not None
        with pytest.raises(LowQualityError) as info:
            g.identify(tiny)
        err = info.value
        assert err.details["image"] == tiny.name and err.details["index"] == 0
        assert _components(err.details["reasons"]) == {"face_size_px", "inter_ocular_px"}  # type: ignore[arg-type]
        # in a batch the first probe below the gate is named, by its position
        with pytest.raises(LowQualityError) as info:
            g.identify_batch([wild_dir / "obama2.jpg", smeared])
        assert info.value.details["index"] == 1 and info.value.details["image"] == smeared.name
        assert _components(info.value.details["reasons"]) == {"sharpness"}  # type: ignore[arg-type]
        ungated = g.identify_batch([wild_dir / "obama2.jpg", smeared], quality=None)
        assert len(ungated) == 2 and ungated[1].quality is not None
        assert ungated[1].quality.sharpness < PROBE_POLICY.min_sharpness  # type: ignore[operator]


def test_gallery_verify_gates_the_probe(
    tmp_path: Path, matcher: FaceMatcher, wild_dir: Path, tiny: Path, smeared: Path
) -> None:
    with Gallery.open(tmp_path / "g.fmg", create=True, matcher=matcher) as g:
        g.enroll("obama", [wild_dir / "obama.jpg"])
        good = g.verify("obama", wild_dir / "obama2.jpg")
        assert good.is_match and good.quality is not None and good.quality.unified is not None
        assert good.to_dict()["quality"]["inter_ocular_px"] > 10
        with pytest.raises(LowQualityError) as info:
            g.verify("obama", tiny)
        err = info.value
        assert err.code == "low_quality" and err.http_status == 422 and err.details["image"] == tiny.name
        assert _components(err.details["reasons"]) == {"face_size_px", "inter_ocular_px"}  # type: ignore[arg-type]
        with pytest.raises(LowQualityError) as info:
            g.verify("obama", smeared)
        assert _components(info.value.details["reasons"]) == {"sharpness"}  # type: ignore[arg-type]
        # no gate: the tiny probe is compared, and its quality says why it is weak
        ungated = g.verify("obama", tiny, quality=None)
        assert ungated.quality is not None and ungated.quality.inter_ocular_px is not None
        assert ungated.quality.inter_ocular_px < PROBE_POLICY.min_inter_ocular  # type: ignore[operator]
        assert ungated.similarity < good.similarity
        # a stricter caller policy refuses even the good probe
        with pytest.raises(LowQualityError):
            g.verify("obama", wild_dir / "obama2.jpg", quality=QualityPolicy(min_inter_ocular=5000))


def test_verify_many_fails_only_the_pairs_of_a_low_quality_image(
    matcher: FaceMatcher, wild_dir: Path, tiny: Path, smeared: Path
) -> None:
    a, b, c = wild_dir / "obama.jpg", wild_dir / "obama2.jpg", wild_dir / "biden.jpg"
    pairs = [(a, b), (a, tiny), (smeared, b), (b, c)]
    gated = matcher.verify_many(pairs, quality=PROBE_POLICY)
    assert [p.ok for p in gated] == [True, False, False, True]
    low = gated.pairs[1].error
    assert low is not None and isinstance(low, LowQualityError) and low.details["image"] == "image2"
    assert _components(low.details["reasons"]) == {"face_size_px", "inter_ocular_px"}  # type: ignore[arg-type]
    assert gated.pairs[2].error is not None and gated.pairs[2].error.details["image"] == "image1"
    d = gated.pairs[2].to_dict()["error"]
    assert d["code"] == "low_quality" and [r["component"] for r in d["reasons"]] == ["sharpness"]
    ok = gated.pairs[0].result
    assert ok is not None and ok.quality1 is not None and ok.quality2 is not None
    # the SDK's default is no gate: every pair is decided, the same similarities where both ran
    plain = matcher.verify_many(pairs)
    assert all(p.ok for p in plain)
    assert plain.pairs[0].result is not None and plain.pairs[0].result.similarity == pytest.approx(ok.similarity)
    assert plain.pairs[1].result is not None and plain.pairs[1].result.quality2 is not None


def test_embedded_images_refuses_a_gate_without_qualities(matcher: FaceMatcher, wild_dir: Path) -> None:
    prep = matcher.prepare(wild_dir / "obama.jpg")
    emb, norms = matcher.embed_crops(prep.crops[:1])
    with pytest.raises(InvalidArgumentError):
        embedded_images([prep], emb, matcher.model_id, None, PROBE_POLICY)
    (e,) = embedded_images([prep], emb, matcher.model_id, [matcher.assess(prep, norms)[0]], PROBE_POLICY)
    assert not isinstance(e, Exception) and e is not None and e.quality is not None
    with pytest.raises(InvalidArgumentError):
        embedded_images([prep], emb, matcher.model_id, [], PROBE_POLICY)
    assert np.allclose(e.vector, emb[0])


# ---- server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("probe-server")
    with Server(tmp, gallery=tmp / "people.fmg") as srv:
        yield srv


def _b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def _part(name: str, p: Path) -> tuple[str, tuple[str, bytes, str]]:
    return (name, (p.name, p.read_bytes(), "application/octet-stream"))


def test_verify_batch_reports_low_quality_per_pair(server: Server, wild_dir: Path, tiny: Path, smeared: Path) -> None:
    images = [wild_dir / "obama.jpg", wild_dir / "obama2.jpg", tiny, smeared]
    parts = [_part("images", p) for p in images]
    pairs = "[[0, 1], [0, 2], [3, 1], [2, 3]]"
    with server.client(headers=auth("match")) as c:
        r = c.post("/verify/batch", files=parts, data={"pairs": pairs})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["failed"] == 3
        first, tiny_pair, smeared_pair, both = body["results"]
        assert first["error"] is None and first["is_match"]
        for face in (first["face1"], first["face2"]):
            assert face["quality"]["unified_status"] == "scored" and face["quality"]["sharpness"] > 3
        assert tiny_pair["error"]["code"] == "low_quality" and tiny_pair["error"]["detail"].startswith("image2:")
        assert _components(tiny_pair["error"]["reasons"]) == {"face_size_px", "inter_ocular_px"}
        assert all(x["limit"] and x["unit"] == "px" and x["message"] for x in tiny_pair["error"]["reasons"])
        assert smeared_pair["error"]["detail"].startswith("image1:")
        assert _components(smeared_pair["error"]["reasons"]) == {"sharpness"}
        assert both["error"]["detail"].startswith("image1:") and both["is_match"] is None
        # the request's policy holds for the whole batch: none decides every pair ...
        r = c.post(
            "/verify/batch",
            json={"images": [_b64(p) for p in images], "pairs": [[0, 1], [0, 2]], "quality_policy": "none"},
        )
        assert r.status_code == 200 and r.json()["failed"] == 0
        assert r.json()["results"][1]["face2"]["quality"]["inter_ocular_px"] < 10
        # ... and a limit no face meets fails every pair, each with its reason
        r = c.post("/verify/batch", files=parts[:2], data={"pairs": "[[0, 1]]", "min_quality": "100"})
        (only,) = r.json()["results"]
        assert only["error"]["code"] == "low_quality" and only["error"]["reasons"][0]["component"] == "unified"
        for bad in ({"min_quality": "150"}, {"quality_policy": "paranoid"}):
            r = c.post("/verify/batch", files=parts[:2], data={"pairs": "[[0, 1]]", **bad})
            assert r.status_code == 422 and r.json()["code"] == "invalid_request", bad


def test_gallery_verify_route_gates_the_probe(server: Server, wild_dir: Path, tiny: Path, smeared: Path) -> None:
    with server.client(headers=auth("admin")) as c:
        r = c.post(
            "/gallery/identities", data={"identity_id": "obama"}, files=[_part("images", wild_dir / "obama.jpg")]
        )
        assert r.status_code == 201, r.text
    with server.client(headers=auth("match")) as c:
        url = "/gallery/identities/obama/verify"
        r = c.post(url, files=[_part("image", wild_dir / "obama2.jpg")])
        assert r.status_code == 200, r.text
        assert r.json()["is_match"] and r.json()["face"]["quality"]["unified"] > 0
        r = c.post(url, files=[_part("image", tiny)])
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        p = r.json()
        assert p["code"] == "low_quality" and p["details"]["image"] == "image" and p["details"]["policy"] == "probe"
        assert _components(p["details"]["reasons"]) == {"face_size_px", "inter_ocular_px"}
        r = c.post(url, json={"image": _b64(smeared)})
        assert r.status_code == 422 and _components(r.json()["details"]["reasons"]) == {"sharpness"}
        r = c.post(url, json={"image": _b64(tiny), "quality_policy": "none"})
        assert r.status_code == 200 and r.json()["face"]["quality"]["inter_ocular_px"] < 10
        r = c.post(url, files=[_part("image", wild_dir / "obama2.jpg")], data={"min_inter_ocular": "5000"})
        assert r.status_code == 422 and r.json()["details"]["reasons"][0]["component"] == "inter_ocular_px"
        r = c.post(url, files=[_part("image", wild_dir / "obama2.jpg")], data={"max_abs_yaw": "-1"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request"
        # the identity is looked up before the gate: an unknown one is still a 404
        assert c.post("/gallery/identities/nobody/verify", files=[_part("image", tiny)]).status_code == 404


def test_rest_client_raises_and_reports_low_quality(server: Server, wild_dir: Path, tiny: Path) -> None:
    with Client(server.url, api_key=KEYS["admin"], timeout=60) as client:
        res = client.verify_batch([wild_dir / "obama.jpg", wild_dir / "obama2.jpg", tiny], [[0, 1], [0, 2]])
        assert [p.ok for p in res] == [True, False]
        err = res.pairs[1].error
        assert isinstance(err, LowQualityError)
        assert _components(err.details["reasons"]) == {"face_size_px", "inter_ocular_px"}  # type: ignore[arg-type]
        client.enroll("client_obama", [wild_dir / "obama.jpg"])
        assert client.verify_identity("client_obama", wild_dir / "obama2.jpg").is_match
        with pytest.raises(LowQualityError) as info:
            client.verify_identity("client_obama", tiny)
        assert _components(info.value.details["reasons"]) == {"face_size_px", "inter_ocular_px"}  # type: ignore[arg-type]


def test_cli_gallery_verify_applies_the_probe_gate(tmp_path: Path, wild_dir: Path, tiny: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "facematch.cli", *args], capture_output=True, text=True, timeout=300, check=False
        )

    g = str(tmp_path / "g.fmg")
    r = cli("gallery", "enroll", g, "obama", str(wild_dir / "obama.jpg"))
    assert r.returncode == 0, r.stderr
    r = cli("gallery", "verify", g, "obama", str(wild_dir / "obama2.jpg"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["is_match"] and json.loads(r.stdout)["quality"]["unified"] > 0
    r = cli("gallery", "verify", g, "obama", str(tiny))
    assert r.returncode == 2 and "low_quality" in r.stderr and "inter_ocular_px" in r.stderr
    r = cli("gallery", "verify", g, "obama", str(tiny), "--quality-policy", "none", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["quality"]["inter_ocular_px"] < 10
    r = cli("gallery", "verify", g, "obama", str(wild_dir / "obama2.jpg"), "--min-face-size", "5000")
    assert r.returncode == 2 and "face_size_px" in r.stderr
    # identify: the same gate and options
    r = cli("gallery", "identify", g, str(wild_dir / "obama2.jpg"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["candidates"][0]["identity_id"] == "obama"
    r = cli("gallery", "identify", g, str(tiny), "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"]["code"] == "low_quality"
    r = cli("gallery", "identify", g, str(tiny), "--quality-policy", "none", "--json")
    assert r.returncode == 0, r.stderr
