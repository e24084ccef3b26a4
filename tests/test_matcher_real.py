"""The real default pack on real images: package photos, ../shared/data/wild and celeb24."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import facematch
from facematch.errors import InvalidArgumentError, InvalidImageError, MultipleFacesError, NoFaceError
from facematch.zoo.landmarks import Landmarks106


def test_package_photos_find_yao_ming_among_players(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    probe = matcher.embed(package_images["yaoming.jpg"])[0]
    players = matcher.embed(package_images["players.jpg"], faces="all")
    assert len(players) >= 15
    sims = np.array([probe.vector @ p.vector for p in players])
    thr = matcher.threshold_for()
    assert (sims >= thr).sum() == 1
    gdp = matcher.embed(package_images["gdp.jpg"], faces="all")
    assert len(gdp) >= 3
    assert max(float(probe.vector @ g.vector) for g in gdp) < thr


def test_faces_are_in_original_coordinates(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    path = package_images["yaoming.jpg"]
    bgr = cv2.imread(str(path))
    dets = matcher.detect(path)
    assert len(dets) == 1
    f = dets[0]
    h, w = bgr.shape[:2]
    assert 0 <= f.box[0] < f.box[2] <= w and 0 <= f.box[1] < f.box[3] <= h
    # landmarks inside the box, eyes above mouth, left eye left of right eye
    assert np.all((f.landmarks[:, 0] >= f.box[0]) & (f.landmarks[:, 0] <= f.box[2]))
    assert f.landmarks[0, 0] < f.landmarks[1, 0] and f.landmarks[0, 1] < f.landmarks[3, 1]
    # upscaled 2x: same face, coordinates doubled
    big = cv2.resize(bgr, (w * 2, h * 2))
    f2 = matcher.detect(big)[0]
    assert np.allclose(f2.box / 2, f.box, atol=6)


def test_all_input_kinds_agree(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    path = package_images["yaoming.jpg"]
    data = path.read_bytes()
    bgr = cv2.imread(str(path))
    pil = Image.open(io.BytesIO(data))
    vecs = [matcher.embed(x)[0].vector for x in (path, str(path), data, bgr, pil)]
    for v in vecs[1:]:
        assert float(v @ vecs[0]) > 0.999


def test_embeddings_are_unit_norm_and_batched(matcher, celeb24_dir) -> None:  # type: ignore[no-untyped-def]
    paths = sorted(celeb24_dir.glob("*/*.png"))[:40]
    crops = np.stack([cv2.imread(str(p)) for p in paths])
    batch = matcher.embed_aligned(crops)
    single = np.concatenate([matcher.embed_aligned(crops[i : i + 1]) for i in range(5)])
    assert batch.shape == (40, 512) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.allclose(batch[:5], single, atol=1e-4)


def test_wild_pairs_at_default_threshold(matcher, wild_dir, wild_labels) -> None:  # type: ignore[no-untyped-def]
    singles = {f: ids[0] for f, ids in wild_labels.items() if len(ids) == 1}
    embs = {f: matcher.embed(wild_dir / f)[0].vector for f in singles}
    thr = matcher.threshold_for()
    same = diff = 0
    for a, b in itertools.combinations(sorted(embs), 2):
        s = float(embs[a] @ embs[b])
        if singles[a] == singles[b]:
            same += 1
            assert s >= thr, f"same person should match: {a} vs {b} ({s:.3f} < {thr:.3f})"
        else:
            diff += 1
            assert s < thr, f"different people should not match: {a} vs {b} ({s:.3f} >= {thr:.3f})"
    assert same >= 20 and diff >= 100


def test_wild_group_photos_contain_the_labelled_people(matcher, wild_dir, wild_labels) -> None:  # type: ignore[no-untyped-def]
    refs = {
        "obama": "obama.jpg",
        "biden": "biden.jpg",
        "kit_harington": "kit_harington1.jpg",
        "rose_leslie": "rose_leslie1.jpg",
    }
    ref_vec = {k: matcher.embed(wild_dir / v)[0].vector for k, v in refs.items()}
    thr = matcher.threshold_for()
    for f, ids in wild_labels.items():
        if len(ids) < 2:
            continue
        faces = matcher.embed(wild_dir / f, faces="all")
        for person in ids:
            best = max(float(ref_vec[person] @ e.vector) for e in faces)
            assert best >= thr, f"{person} not found in {f}"


def test_verify_api_and_threshold_choices(matcher, wild_dir) -> None:  # type: ignore[no-untyped-def]
    r = facematch.verify(wild_dir / "obama.jpg", wild_dir / "obama_240p.jpg")
    assert r.is_match and r.threshold == pytest.approx(matcher.threshold_for(1e-3))
    assert r.face1 is not None and r.face2 is not None and r.target_fmr == 1e-3
    strict = matcher.verify(wild_dir / "obama.jpg", wild_dir / "obama_240p.jpg", fmr=1e-4)
    assert strict.threshold > r.threshold and strict.similarity == pytest.approx(r.similarity, abs=1e-6)
    never = matcher.verify(wild_dir / "obama.jpg", wild_dir / "obama_240p.jpg", threshold=0.999)
    assert not never.is_match and never.target_fmr is None
    with pytest.raises(InvalidArgumentError):
        matcher.verify(wild_dir / "obama.jpg", wild_dir / "biden.jpg", threshold=0.3, fmr=1e-3)
    with pytest.warns(DeprecationWarning, match="fmr"):  # the old name still works, for one release
        old = matcher.verify(wild_dir / "obama.jpg", wild_dir / "obama_240p.jpg", far=1e-4)
    assert old.threshold == strict.threshold and old.target_fmr == 1e-4
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidArgumentError, match="not both"):
        matcher.verify(wild_dir / "obama.jpg", wild_dir / "obama_240p.jpg", far=1e-4, fmr=1e-3)
    with pytest.raises(InvalidArgumentError):
        matcher.verify(wild_dir / "obama.jpg", wild_dir / "biden.jpg", threshold=2.0)
    d = r.to_dict()
    assert set(d) >= {"is_match", "similarity", "threshold", "face1", "face2"}
    assert "vector" not in json.dumps(d)


def test_rgba_and_partial_faces(matcher, wild_dir) -> None:  # type: ignore[no-untyped-def]
    assert matcher.verify(wild_dir / "rgba_32bit.png", wild_dir / "obama.jpg").is_match
    assert matcher.verify(wild_dir / "obama_partial_face.jpg", wild_dir / "obama.jpg").is_match


def test_no_face_and_policies(matcher, wild_dir, package_images) -> None:  # type: ignore[no-untyped-def]
    blank = np.full((300, 300, 3), 128, np.uint8)
    with pytest.raises(NoFaceError):
        matcher.verify(blank, wild_dir / "obama.jpg")
    assert len(matcher.detect(blank)) == 0
    strict = facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, face_policy="reject")
    with pytest.raises(MultipleFacesError):
        strict.verify(package_images["gdp.jpg"], wild_dir / "obama.jpg")
    with pytest.raises(InvalidImageError):
        matcher.verify(b"not an image", wild_dir / "obama.jpg")
    with pytest.raises(InvalidArgumentError):
        facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, face_policy="first")  # type: ignore[arg-type]


def test_tight_aligned_crops_are_detected(matcher, celeb24_dir) -> None:  # type: ignore[no-untyped-def]
    paths = sorted(celeb24_dir.glob("*/*.png"))[::10]
    found = sum(len(matcher.detect(p)) > 0 for p in paths)
    assert found == len(paths), f"{len(paths) - found} of {len(paths)} tight 112x112 crops missed"


def test_aligned_verify_skips_detection(matcher, celeb24_dir) -> None:  # type: ignore[no-untyped-def]
    a, b = sorted((celeb24_dir / "Tom_Hanks").glob("*.png"))[:2]
    c = sorted((celeb24_dir / "Halle_Berry").glob("*.png"))[0]
    same = matcher.verify(a, b, aligned=True)
    assert same.is_match and same.face1 is None
    assert not matcher.verify(a, c, aligned=True).is_match


@pytest.mark.slow
def test_celeb24_tar_at_fmr_1e3(matcher, celeb24_dir) -> None:  # type: ignore[no-untyped-def]
    paths = sorted(celeb24_dir.glob("*/*.png"))
    labels = np.array([p.parent.name for p in paths])
    emb = matcher.embed_aligned(np.stack([cv2.imread(str(p)) for p in paths]))
    sims = emb @ emb.T
    iu = np.triu_indices(len(paths), 1)
    same = labels[iu[0]] == labels[iu[1]]
    thr = matcher.threshold_for(1e-3)
    tar = float(np.mean(sims[iu][same] >= thr))
    far = float(np.mean(sims[iu][~same] >= thr))
    assert tar >= 0.90, tar
    assert far <= 1e-3


def test_landmarks106_points_fall_on_the_face(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    from facematch.model_files import load_card, resolve_model_path, verify_file
    from facematch.runtime import create_session

    card = load_card("2d106det")
    path = resolve_model_path(card)
    verify_file(card, path)
    lm = Landmarks106(create_session(path), card)
    img = cv2.imread(str(package_images["yaoming.jpg"]))
    face = matcher.detect(img)[0]
    pts = lm.predict(img, [face])
    assert pts.shape == (1, 106, 2)
    x1, y1, x2, y2 = face.box
    inside = (pts[0, :, 0] > x1 - 10) & (pts[0, :, 0] < x2 + 10) & (pts[0, :, 1] > y1 - 10) & (pts[0, :, 1] < y2 + 10)
    assert inside.mean() > 0.95


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "facematch.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_verify_json_and_errors(wild_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ok = _cli("verify", str(wild_dir / "obama.jpg"), str(wild_dir / "obama2.jpg"), "--json")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["is_match"] is True and out["similarity"] > out["threshold"]
    no = _cli("verify", str(wild_dir / "obama.jpg"), str(wild_dir / "biden.jpg"), "--fmr", "1e-4", "--json")
    assert no.returncode == 0 and json.loads(no.stdout)["is_match"] is False
    assert json.loads(no.stdout)["target_fmr"] == 1e-4
    old = _cli("verify", str(wild_dir / "obama.jpg"), str(wild_dir / "biden.jpg"), "--far", "1e-4", "--json")
    assert old.returncode == 0 and json.loads(old.stdout)["target_fmr"] == 1e-4 and "deprecated" in old.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    bad = _cli("verify", str(text), str(wild_dir / "obama.jpg"))
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "error" in bad.stderr
    npy = tmp_path / "e.npy"
    emb = _cli("embed", str(wild_dir / "obama.jpg"), "--out", str(npy))
    assert emb.returncode == 0 and np.load(npy).shape == (1, 512)
    assert "vector" not in emb.stdout
    drawn = tmp_path / "d.jpg"
    det = _cli("detect", str(wild_dir / "group_kit_rose.jpg"), "--json", "--draw", str(drawn))
    assert det.returncode == 0 and json.loads(det.stdout)["count"] == 2 and drawn.stat().st_size > 0


def test_cli_demo_runs_on_the_installed_pack() -> None:
    r = _cli("demo", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["matching_faces"] == 1


def test_small_face_in_a_large_frame_falls_back_to_full_detection(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    face_img = cv2.imread(str(package_images["yaoming.jpg"]))  # 233x287, one face
    canvas = np.full((2400, 2400, 3), 90, np.uint8)
    canvas[1500 : 1500 + face_img.shape[0], 300 : 300 + face_img.shape[1]] = face_img
    coarse = matcher.detector.detect(canvas, input_size=320)
    assert len(coarse) == 0 or min(coarse[0].width, coarse[0].height) * 320 / 2400 < matcher.min_coarse_face
    emb = matcher.embed(canvas)[0]
    assert emb.face is not None and 300 <= emb.face.box[0] < 300 + face_img.shape[1]
    ref = matcher.embed(package_images["yaoming.jpg"])[0]
    assert float(emb.vector @ ref.vector) > 0.8


def test_side_by_side_verify_equals_sequential(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    """workers=2 runs verify's two images in parallel; the answer must not change, nor its errors."""
    sequential = facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, workers=1)
    parallel = facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, workers=2)
    a, b, c = package_images["yaoming.jpg"], package_images["players.jpg"], package_images["gdp.jpg"]
    for x, y in ((a, b), (a, a), (b, c)):
        r1, r2 = sequential.verify(x, y), parallel.verify(x, y)
        assert r1.similarity == pytest.approx(r2.similarity, abs=1e-5)
        assert np.allclose(r1.face2.box, r2.face2.box) and r1.is_match == r2.is_match
    blank = np.full((200, 200, 3), 127, np.uint8)
    with pytest.raises(NoFaceError):
        parallel.verify(a, blank)  # the pool thread's error reaches the caller
    with pytest.raises(InvalidImageError):
        parallel.verify(b"not an image", blank)  # the first image's error wins, as sequentially
    assert parallel.verify(a, a).is_match  # still usable after errors
    parallel.close()
    assert parallel.verify(a, a).is_match  # and after close(): the pool restarts
    with pytest.raises(InvalidArgumentError):
        facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, workers=0)


def test_split_embedding_equals_one_batch(matcher, celeb24_dir) -> None:  # type: ignore[no-untyped-def]
    """Batches are split over the worker threads; rows must come back in order, unchanged."""
    crops = np.stack([cv2.imread(str(p)) for p in sorted(celeb24_dir.glob("*/*.png"))[:37]])
    one = facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, workers=1)
    three = facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, workers=3)
    e1, n1 = one.embed_aligned_with_norms(crops)
    e3, n3 = three.embed_aligned_with_norms(crops)
    assert e3.shape == (37, matcher.dim)
    assert np.allclose(e1, e3, atol=1e-5) and np.allclose(n1, n3, rtol=1e-5)
    assert three.embed_aligned(crops[:1]).shape == (1, matcher.dim)
    assert three.embed_aligned(crops[:0]).shape == (0, matcher.dim)


def test_embed_uses_the_matchers_face_policy(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    players = package_images["players.jpg"]
    best = facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, face_policy="best")
    dets = best.detect(players)
    top_score = dets[int(np.argmax(dets.scores))]
    emb = best.embed(players)[0]
    assert emb.face is not None and np.allclose(emb.face.box, top_score.box, atol=1.0)
    assert np.allclose(matcher.embed(players)[0].face.box, dets.largest().box, atol=1.0)
    strict = facematch.FaceMatcher(detector=matcher.detector, embedder=matcher.embedder, face_policy="reject")
    with pytest.raises(facematch.MultipleFacesError):
        strict.embed(players)
    assert len(strict.embed(players, faces="all")) == len(dets)
    with pytest.raises(InvalidArgumentError):
        matcher.embed(players, faces="smallest")  # type: ignore[arg-type]


def test_threshold_arguments_are_type_checked(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    a = package_images["yaoming.jpg"]
    for kwargs in ({"fmr": "x"}, {"threshold": "0.3"}, {"fmr": True}, {"threshold": None, "fmr": [1e-3]}, {"fmr": 1.0}):
        with pytest.raises(InvalidArgumentError):
            matcher.verify(a, a, **kwargs)


def test_cli_reports_unwritable_outputs_in_one_line(wild_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad_ext = _cli("detect", str(wild_dir / "obama.jpg"), "--draw", str(tmp_path / "out.xyz"))
    assert bad_ext.returncode == 1 and bad_ext.stderr.strip().count("\n") == 0, bad_ext.stderr
    assert bad_ext.stderr.startswith(f"error [cannot_write]: {tmp_path / 'out.xyz'}: cannot write it")
    no_dir = _cli("embed", str(wild_dir / "obama.jpg"), "--out", str(tmp_path / "missing" / "e.npy"))
    assert no_dir.returncode == 1 and "cannot write" in no_dir.stderr
    plain = _cli("embed", str(wild_dir / "obama.jpg"), "--out", str(tmp_path / "noext"), "--json")
    assert json.loads(plain.stdout)["out"] == str(tmp_path / "noext.npy") and (tmp_path / "noext.npy").exists()


# ---- the shared steps: prepare → embed_crops → compare ---------------------------------------------
def test_prepare_selects_and_aligns_once(matcher, package_images) -> None:  # type: ignore[no-untyped-def]
    players = package_images["players.jpg"]
    dets = matcher.detect(players)
    every = matcher.prepare(players, "all")
    assert len(every) == every.faces_total == len(dets) > 5 and not every.truncated
    assert np.all(np.diff(every.faces.areas) <= 0)  # largest first
    assert every.crops.shape == (len(dets), 112, 112, 3) and every.crops.dtype == np.uint8
    few = matcher.prepare(players, "all", max_faces=3)
    assert len(few) == 3 and few.faces_total == len(dets) and few.truncated
    np.testing.assert_allclose(few.faces.boxes, every.faces.boxes[:3])
    np.testing.assert_array_equal(few.crops, every.crops[:3])
    # the crops are the public align step's crops of the same faces (no second crop path)
    np.testing.assert_array_equal(every.crops, matcher.align(players, every.faces))
    largest = matcher.prepare(players)  # coarse-first largest face
    assert len(largest) == 1 and np.allclose(largest.faces[0].box, dets.largest().box, atol=2.0)
    assert largest.image_size == matcher.load(players).original_size
    with pytest.raises(facematch.MultipleFacesError):
        matcher.prepare(players, "reject")
    with pytest.raises(InvalidArgumentError):
        matcher.prepare(players, "all", max_faces=0)


def test_prepare_aligned_input_and_no_face(matcher, celeb24_dir) -> None:  # type: ignore[no-untyped-def]
    crop = next(iter(sorted(celeb24_dir.glob("*/*.png"))))
    prep = matcher.prepare(crop, aligned=True)
    assert prep.aligned and len(prep) == 1 and len(prep.faces) == 0 and prep.face(0) is None
    np.testing.assert_array_equal(prep.crops[0], matcher.aligned_crop(crop))
    with pytest.raises(facematch.NoFaceError):
        matcher.prepare(np.full((200, 200, 3), 127, np.uint8))
    with pytest.raises(facematch.NoFaceError):
        matcher.prepare(np.full((200, 200, 3), 127, np.uint8), "all")


def test_compare_is_the_verify_decision(matcher, wild_dir) -> None:  # type: ignore[no-untyped-def]
    a, b = matcher.embed(wild_dir / "obama.jpg")[0], matcher.embed(wild_dir / "obama2.jpg")[0]
    c = matcher.embed(wild_dir / "biden.jpg")[0]
    same, other = matcher.compare(a, b), matcher.compare(a, c)
    assert same.is_match and not other.is_match
    assert same.similarity == pytest.approx(float(a.vector @ b.vector), abs=1e-6)
    assert same.face1 is a.face and same.face2 is b.face and same.target_fmr == 1e-3
    verified = matcher.verify(wild_dir / "obama.jpg", wild_dir / "obama2.jpg")
    assert verified.similarity == pytest.approx(same.similarity, abs=1e-6)
    assert verified.threshold == same.threshold and verified.is_match == same.is_match
    # raw vectors are normalised: scaling one changes nothing
    assert matcher.compare(a.vector * 7.0, b.vector).similarity == pytest.approx(same.similarity, abs=1e-6)
    assert matcher.compare(a, b, threshold=0.99).is_match is False
    with pytest.raises(InvalidArgumentError):
        matcher.compare(a.vector[:10], b.vector)
    with pytest.raises(InvalidArgumentError):
        matcher.compare(np.zeros(matcher.dim), b.vector)
    with pytest.raises(facematch.ModelMismatchError):
        matcher.compare(facematch.FaceEmbedding(None, a.vector, "another_model"), b)
