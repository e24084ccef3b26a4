"""FaceMatcher.explain: the exact decomposition (real model and a closed-form oracle), occlusion, the
fallback, the maps in the photo, the regions, bad input and the graph cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _explain_util import GRID, build_toy

from facematch import FaceMatcher
from facematch.align import ARCFACE_TEMPLATE, alignment_matrix
from facematch.errors import ExplanationUnavailableError, InvalidArgumentError, NoFaceError, NotAlignedError
from facematch.explain import (
    REGIONS,
    RESIDUAL_TOLERANCE,
    cell_region_fractions,
    neutral_pixel,
    occluded_crops,
    occlusion_cells,
    photo_map,
    region_labels,
    region_shares,
)
from facematch.preprocess import to_blob
from facematch.types import Face

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The derived explain graphs go to a test folder, not the user's cache."""
    monkeypatch.setenv("FACEMATCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "explain-cache"))


def _celeb_pairs(celeb24_dir: Path) -> list[tuple[Path, Path]]:
    ids = sorted(d for d in celeb24_dir.iterdir() if d.is_dir())
    files = [sorted(d.iterdir()) for d in ids[:3]]
    genuine = [(f[0], f[1]) for f in files]
    impostor = [(files[0][0], files[1][0]), (files[1][2], files[2][3]), (files[2][1], files[0][4])]
    return genuine + impostor


# ---- the real default model --------------------------------------------------------------------


def test_decomposition_reproduces_the_cosine_on_the_default_model(matcher: FaceMatcher, celeb24_dir: Path) -> None:
    for a, b in _celeb_pairs(celeb24_dir):
        ex = matcher.explain(a, b, aligned=True)
        res = matcher.verify(a, b, aligned=True)
        assert ex.method == "decomposition" and ex.fallback_reason is None
        assert ex.residual is not None and ex.residual <= RESIDUAL_TOLERANCE
        assert ex.similarity == pytest.approx(res.similarity, abs=1e-6)
        assert ex.is_match == res.is_match and ex.threshold == res.threshold
        for side in ex.faces:
            assert side.cells.shape == (7, 7)
            total = float(side.cells.astype(np.float64).sum()) + side.bias
            assert total == pytest.approx(ex.similarity, abs=RESIDUAL_TOLERANCE)
            regions = sum(r.contribution for r in side.regions) + side.bias
            assert regions == pytest.approx(ex.similarity, abs=RESIDUAL_TOLERANCE)
            assert [r.region for r in side.regions] == list(REGIONS)
            assert sum(abs(r.share) for r in side.regions) == pytest.approx(1.0)
    # the JSON view is plain JSON
    assert json.loads(json.dumps(ex.to_dict()))["method"] == "decomposition"


def test_photo_pair_maps_land_on_the_faces(matcher: FaceMatcher, wild_dir: Path) -> None:
    a, b = wild_dir / "obama.jpg", wild_dir / "obama2.jpg"
    ex = matcher.explain(a, b)
    res = matcher.verify(a, b)
    assert ex.method == "decomposition" and ex.similarity == pytest.approx(res.similarity, abs=1e-6)
    for side, face in zip(ex.faces, (res.face1, res.face2), strict=True):
        assert side.face is not None and face is not None
        np.testing.assert_allclose(side.face.box, face.box, atol=1e-3)
        w, h = side.image_size
        x0, y0, x1, y1 = side.image_box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert side.image_map.shape == (y1 - y0, x1 - x0)
        full = side.full_image_map()
        assert full.shape == (h, w) and np.count_nonzero(full) == np.count_nonzero(side.image_map)
        # the landmarks lie inside the crop's footprint, and the map's largest cell inside the face's box
        lm = side.face.landmarks
        assert np.all((lm[:, 0] > x0) & (lm[:, 0] < x1) & (lm[:, 1] > y0) & (lm[:, 1] < y1))
        bx0, by0, bx1, by1 = side.face.box
        m = alignment_matrix(side.face.landmarks)
        cy, cx = np.unravel_index(np.argmax(side.cells), side.cells.shape)
        crop_pt = np.array([(cx + 0.5) * 16, (cy + 0.5) * 16])
        photo_pt = np.linalg.solve(m[:, :2], crop_pt - m[:, 2])
        assert bx0 <= photo_pt[0] <= bx1 and by0 <= photo_pt[1] <= by1
        # and the photo map there has the crop map's value
        val = full[int(round(photo_pt[1])), int(round(photo_pt[0]))]
        assert val == pytest.approx(
            side.crop_map[int(crop_pt[1]), int(crop_pt[0])], abs=0.1 * float(np.abs(side.cells).max())
        )


def test_occlusion_on_the_default_model(matcher: FaceMatcher, celeb24_dir: Path) -> None:
    a, b = _celeb_pairs(celeb24_dir)[0]
    ex = matcher.explain(a, b, aligned=True, method="occlusion")
    res = matcher.verify(a, b, aligned=True)
    assert ex.method == "occlusion" and ex.residual is None and ex.fallback_reason is None
    assert ex.similarity == pytest.approx(res.similarity, abs=1e-6)
    for side in ex.faces:
        assert side.cells.shape == (7, 7) and np.all(np.isfinite(side.cells)) and side.bias == 0.0
        assert side.cells.max() > 0.01  # covering the most telling cell of a genuine pair costs similarity
        assert side.residual is None


def test_aligned_input_maps_are_the_crop_maps(matcher: FaceMatcher, celeb24_dir: Path) -> None:
    a, b = _celeb_pairs(celeb24_dir)[0]
    ex = matcher.explain(a, b, aligned=True)
    for side in ex.faces:
        assert side.face is None and side.image_size == (112, 112) and side.image_box == (0, 0, 112, 112)
        np.testing.assert_array_equal(side.image_map, side.crop_map)
        assert side.crop.shape == (112, 112, 3) and side.crop.dtype == np.uint8


def test_bad_input_as_for_verify(matcher: FaceMatcher, wild_dir: Path, celeb24_dir: Path) -> None:
    blank = np.full((300, 400, 3), 127, np.uint8)
    with pytest.raises(NoFaceError) as info:
        matcher.explain(wild_dir / "obama.jpg", blank)
    assert info.value.details["image"] == "image2"
    with pytest.raises(NotAlignedError) as na:
        matcher.explain(wild_dir / "obama.jpg", celeb24_dir / "Barack_Obama" / sorted(
            p.name for p in (celeb24_dir / "Barack_Obama").iterdir())[0], aligned=True)  # fmt: skip
    assert na.value.details["image"] == "image1"
    with pytest.raises(InvalidArgumentError, match="method"):
        matcher.explain(wild_dir / "obama.jpg", wild_dir / "obama2.jpg", method="gradcam")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        matcher.explain(wild_dir / "obama.jpg", wild_dir / "obama2.jpg", threshold=0.3, fmr=1e-3)


def test_card_without_explain_block_refuses_the_decomposition(celeb24_dir: Path, tmp_path: Path) -> None:
    card = json.loads((REPO / "models" / "w600k_mbf.json").read_text())
    del card["explain"]
    card["id"] = "w600k_mbf_noexplain"
    path = tmp_path / "w600k_mbf_noexplain.json"
    path.write_text(json.dumps(card))
    m = FaceMatcher(embedder=str(path), workers=1)
    a, b = _celeb_pairs(celeb24_dir)[0]
    with pytest.raises(ExplanationUnavailableError, match="no 'explain' block") as info:
        m.explain(a, b, aligned=True, method="decomposition")
    assert info.value.code == "explanation_unavailable" and info.value.http_status == 422
    auto = m.explain(a, b, aligned=True)
    assert auto.method == "occlusion" and "explain" in (auto.fallback_reason or "")
    occ = m.explain(a, b, aligned=True, method="occlusion")
    assert occ.method == "occlusion" and occ.fallback_reason is None
    np.testing.assert_allclose(occ.first.cells, auto.first.cells, atol=1e-6)


# ---- a closed-form oracle -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_toy(tmp_path_factory.mktemp("toy"), "toy_affine")


@pytest.fixture(scope="module")
def toy_matcher(toy) -> FaceMatcher:  # type: ignore[no-untyped-def]
    return FaceMatcher(embedder=str(toy.path), workers=1)


def _two_crops(m: FaceMatcher, celeb24_dir: Path, k: int = 0) -> tuple[Path, Path, np.ndarray]:
    a, b = _celeb_pairs(celeb24_dir)[k]
    crops = np.stack([m.prepare(a, aligned=True).crops[0], m.prepare(b, aligned=True).crops[0]])
    return a, b, crops


@pytest.mark.parametrize("k", [0, 3])
def test_decomposition_matches_the_closed_form(toy, toy_matcher: FaceMatcher, celeb24_dir: Path, k: int) -> None:  # type: ignore[no-untyped-def]
    a, b, crops = _two_crops(toy_matcher, celeb24_dir, k)
    feats = toy.features(to_blob(crops, toy_matcher.embedder_card.input, (112, 112)))
    e = toy.embed_raw(feats)
    norms = np.linalg.norm(e, axis=1)
    unit = e / norms[:, None]
    terms = toy.terms(feats)
    ex = toy_matcher.explain(a, b, aligned=True, threshold=0.5)
    assert ex.method == "decomposition" and ex.residual is not None and ex.residual < 1e-5
    assert ex.similarity == pytest.approx(float(unit[0] @ unit[1]), abs=1e-5)
    for i, side in enumerate(ex.faces):
        want = (terms[i] @ unit[1 - i] / norms[i]).reshape(GRID, GRID)
        np.testing.assert_allclose(side.cells, want, atol=2e-6)
        assert side.bias == pytest.approx(float(toy.b2 @ unit[1 - i] / norms[i]), abs=2e-6)
        # region shares: each cell split by its pixels
        frac = cell_region_fractions("arcface_112", (GRID, GRID))
        np.testing.assert_allclose([r.contribution for r in side.regions], want.reshape(-1) @ frac, atol=2e-6)


def test_occlusion_matches_the_closed_form(toy, toy_matcher: FaceMatcher, celeb24_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """With a one-cell patch only that cell's features change (stride-16 conv): the drop in closed form."""
    _, _, crops = _two_crops(toy_matcher, celeb24_dir)
    spec = toy_matcher.embedder_card.input
    feats = toy.features(to_blob(crops, spec, (112, 112)))
    e = toy.embed_raw(feats)
    unit = e / np.linalg.norm(e, axis=1)[:, None]
    fill = neutral_pixel(toy_matcher)
    grey = np.broadcast_to(fill, (1, 112, 112, 3)).astype(np.uint8)
    f_fill = toy.features(to_blob(grey, spec, (112, 112)))[0]
    emb, _ = toy_matcher.embed_crops(crops)
    got = occlusion_cells(toy_matcher, crops, emb, patch_cells=1)
    for i in range(2):
        want = np.zeros((GRID, GRID))
        for p in range(GRID * GRID):
            y, x = divmod(p, GRID)
            f = feats[i].copy()
            f[:, y, x] = f_fill[:, y, x]
            occ = toy.embed_raw(f[None])[0]
            want[y, x] = float(unit[0] @ unit[1]) - float(occ @ unit[1 - i] / np.linalg.norm(occ))
        np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_non_affine_head_fails_the_check_and_auto_falls_back(celeb24_dir: Path, tmp_path: Path) -> None:
    toy = build_toy(tmp_path, "toy_tanh", head="tanh")
    m = FaceMatcher(embedder=str(toy.path), workers=1)
    a, b = _celeb_pairs(celeb24_dir)[0]
    with pytest.raises(ExplanationUnavailableError, match="does not reproduce the cosine") as info:
        m.explain(a, b, aligned=True, method="decomposition", threshold=0.5)
    assert info.value.details["residual"] > RESIDUAL_TOLERANCE
    ex = m.explain(a, b, aligned=True, threshold=0.5)
    assert ex.method == "occlusion" and "not affine" in (ex.fallback_reason or "")
    assert ex.similarity == pytest.approx(m.verify(a, b, aligned=True, threshold=0.5).similarity, abs=1e-6)


@pytest.mark.parametrize(
    ("explain", "message"),
    [
        ({"feature": "no_such_tensor", "feature_shape": [4, 7, 7]}, "no node of the graph computes"),
        ({"feature": "feat", "feature_shape": [4, 14, 14]}, "the graph computes"),
        ({"feature": "feat", "feature_shape": [4, 7, 7], "embedding_output": "nowhere"}, "embedding tensor"),
        ({"feature": "x", "feature_shape": [3, 112, 112]}, "no node of the graph computes"),
    ],
)
def test_a_card_naming_the_wrong_tensor_is_refused(
    celeb24_dir: Path, tmp_path: Path, explain: dict, message: str
) -> None:
    toy = build_toy(tmp_path, "toy_wrong", explain=explain)
    m = FaceMatcher(embedder=str(toy.path), workers=1)
    a, b = _celeb_pairs(celeb24_dir)[0]
    with pytest.raises(ExplanationUnavailableError, match=message):
        m.explain(a, b, aligned=True, method="decomposition", threshold=0.5)
    assert m.explain(a, b, aligned=True, threshold=0.5).method == "occlusion"


def test_derived_graphs_are_cached_on_disk(celeb24_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facematch import explain_graph

    monkeypatch.setenv("FACEMATCH_CACHE_DIR", str(tmp_path / "cache"))
    toy = build_toy(tmp_path, "toy_cached")
    a, b = _celeb_pairs(celeb24_dir)[0]
    first = FaceMatcher(embedder=str(toy.path), workers=1).explain(a, b, aligned=True, threshold=0.5)
    cached = sorted(p.name for p in (tmp_path / "cache" / "explain").iterdir())
    assert any(n.endswith(".head.onnx") for n in cached) and any(n.endswith(".features.onnx") for n in cached)

    calls = []
    real = explain_graph.build_graphs

    def counting(*args, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(explain_graph, "build_graphs", counting)
    again = FaceMatcher(embedder=str(toy.path), workers=1).explain(a, b, aligned=True, threshold=0.5)
    assert calls == []  # a new process (a new embedder) reads the cache
    np.testing.assert_array_equal(again.first.cells, first.first.cells)
    head = next(p for p in (tmp_path / "cache" / "explain").iterdir() if p.name.endswith(".head.onnx"))
    head.write_bytes(head.read_bytes()[:-10])  # a truncated entry is rebuilt, not trusted
    FaceMatcher(embedder=str(toy.path), workers=1).explain(a, b, aligned=True, threshold=0.5)
    assert calls == [1]


# ---- pieces -------------------------------------------------------------------------------------


def test_regions_follow_the_template() -> None:
    labels = region_labels("arcface_112")
    assert labels.shape == (112, 112)
    lab = lambda p: REGIONS[labels[int(p[1]), int(p[0])]]  # noqa: E731
    assert lab(ARCFACE_TEMPLATE[0]) == lab(ARCFACE_TEMPLATE[1]) == "eyes"
    assert lab(ARCFACE_TEMPLATE[2]) == "nose"
    assert lab((ARCFACE_TEMPLATE[3] + ARCFACE_TEMPLATE[4]) / 2) == "mouth"
    assert lab((56, 58)) == "nose"  # the bridge, between the eyes
    assert lab((2, 2)) == lab((109, 109)) == lab((56, 10)) == "rest"
    frac = cell_region_fractions("arcface_112", (7, 7))
    np.testing.assert_allclose(frac.sum(1), 1.0)
    cells = np.random.default_rng(0).normal(size=(7, 7))
    shares = region_shares(cells, "arcface_112")
    assert sum(r.contribution for r in shares) == pytest.approx(cells.sum())
    assert sum(abs(r.share) for r in shares) == pytest.approx(1.0)
    assert all(r.share == 0.0 for r in region_shares(np.zeros((7, 7)), "arcface_112"))


def test_occluding_patches() -> None:
    crop = np.zeros((112, 112, 3), np.uint8)
    fill = np.array([128, 128, 128], np.uint8)
    out = occluded_crops(crop, (7, 7), fill, patch_cells=2)
    assert out.shape == (49, 112, 112, 3)
    covered = (out[..., 0] == 128).sum(axis=(1, 2))
    assert covered[24] == 32 * 32  # the centre cell: a 32-pixel patch centred on it
    assert covered[0] == 24 * 24  # a corner: clipped at the crop's edges
    one = occluded_crops(crop, (7, 7), fill, patch_cells=1)
    assert np.all((one[..., 0] == 128).sum(axis=(1, 2)) == 256)
    assert np.array_equal(one[8, 16:32, 16:32], np.full((16, 16, 3), 128, np.uint8))


def test_photo_map_inverts_the_alignment_exactly() -> None:
    """A face whose landmarks are the template under a known similarity transform: the map lands in closed form."""
    angle, scale, shift = np.deg2rad(20.0), 2.5, np.array([140.0, 60.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = ARCFACE_TEMPLATE.astype(np.float64) @ rot.T + shift
    face = Face(box=np.array([100, 50, 500, 450]), score=0.9, landmarks=landmarks)
    u, v = np.meshgrid(np.arange(112.0), np.arange(112.0))
    cmap = (0.01 * u - 0.02 * v + 0.3).astype(np.float32)  # linear: bilinear sampling is exact
    roi, (x0, y0, x1, y1) = photo_map(cmap, face, "arcface_112", (640, 480))
    assert roi.shape == (y1 - y0, x1 - x0)
    inv = np.linalg.inv(rot)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    crop_pts = (np.stack([xs, ys], -1).astype(np.float64) - shift) @ inv.T
    inside = np.all((crop_pts >= 1) & (crop_pts <= 110), axis=-1)
    want = 0.01 * crop_pts[..., 0] - 0.02 * crop_pts[..., 1] + 0.3
    assert inside.sum() > 0.5 * (112 * scale) ** 2
    np.testing.assert_allclose(roi[inside], want[inside], atol=2e-3)
    outside = np.all((crop_pts < -2) | (crop_pts > 114), axis=-1)
    assert np.all(roi[outside] == 0)


def test_explain_stays_out_of_import_time() -> None:
    code = (
        "import sys, facematch, facematch.matcher, facematch.explain, facematch.server.routes.explain;"
        "print(sorted(m for m in ('onnx', 'matplotlib', 'facematch.explain_graph', 'facematch.explain_render') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
