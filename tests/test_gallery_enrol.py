"""Enrolment as composed steps, on real photos and the real default model: prepare → embed_crops → enroll_prepared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facematch.errors import (
    DuplicateIdentityError,
    FacematchError,
    GalleryError,
    IdentityNotFoundError,
    InvalidArgumentError,
    InvalidImageError,
    ModelMismatchError,
    MultipleFacesError,
    NoFaceError,
)
from facematch.gallery import Gallery
from facematch.gallery.enrol import assess_enrolment, prepare_for_enrolment
from facematch.quality import FaceQuality
from facematch.types import PreparedImage

BLANK = np.full((200, 200, 3), 127, np.uint8)  # an image without a face
GROUP = "group_obama_biden.jpg"  # three faces


def _prepare(
    matcher: Any, images: list[Any]
) -> tuple[list[PreparedImage | FacematchError], np.ndarray, list[FaceQuality]]:
    """What a caller with its own embedding batcher does: prepare each image, one embed_crops call, assess."""
    prepared: list[PreparedImage | FacematchError] = []
    for image in images:
        try:
            prepared.append(prepare_for_enrolment(matcher, image, aligned=False))
        except FacematchError as exc:
            prepared.append(exc)
    crops = [p.crops[0] for p in prepared if isinstance(p, PreparedImage)]
    if not crops:
        return prepared, np.zeros((0, matcher.dim), np.float32), []
    emb, norms = matcher.embed_crops(np.stack(crops))
    return prepared, emb, assess_enrolment(matcher, prepared, norms)


@pytest.fixture(scope="module")
def batch(wild_dir: Path, matcher):  # type: ignore[no-untyped-def]
    """obama, (no face), group of three, (not an image), biden: prepared, embedded and assessed once.

    Every face here passes the enrolment quality policy; ``quals[k]`` belongs to embedding row ``k``.
    """
    images = [wild_dir / "obama.jpg", BLANK, wild_dir / GROUP, b"not an image", wild_dir / "biden.jpg"]
    prepared, emb, quals = _prepare(matcher, images)
    return images, prepared, emb, quals


SOURCES = ["obama.jpg", "#1", GROUP, "#3", "biden.jpg"]


def test_prepare_for_enrolment_keeps_the_largest_of_all_faces(wild_dir: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    group = wild_dir / GROUP
    prep = prepare_for_enrolment(matcher, group, aligned=False)
    every = matcher.detect(group)
    assert prep.faces_total == len(every) >= 2 and len(prep) == 1 and prep.truncated
    assert prep.face(0).area == pytest.approx(max(f.area for f in every), rel=1e-6)
    # the same face and embedding the SDK gives for "all faces, largest first"
    ref = matcher.embed(group, faces="all")[0].vector
    assert float(matcher.embed_crops(prep.crops)[0][0] @ ref) > 0.999
    aligned = prepare_for_enrolment(matcher, prep.crops[0], aligned=True)
    assert aligned.aligned and aligned.faces_total == 1 and aligned.face(0) is None


def test_enroll_prepared_mixed_items(tmp_path: Path, batch, matcher) -> None:  # type: ignore[no-untyped-def]
    _, prepared, emb, quals = batch
    assert [type(p).__name__ for p in prepared] == [
        "PreparedImage",
        "NoFaceError",
        "PreparedImage",
        "InvalidImageError",
        "PreparedImage",
    ]
    with Gallery(tmp_path / "g.fmg", matcher=matcher) as g:
        rep = g.enroll_prepared(
            "mixed",
            prepared,
            emb,
            sources=SOURCES,
            model_id=matcher.model_id,
            metadata={"k": 1},
            create=True,
            qualities=quals,
        )
        assert rep.created and rep.identity_id == "mixed" and not rep.ok
        assert [o.status for o in rep.outcomes] == ["enrolled", "no_face", "enrolled", "invalid_image", "enrolled"]
        assert [o.source for o in rep.outcomes] == SOURCES and [o.index for o in rep.outcomes] == list(range(5))
        assert rep.outcomes[2].faces_found == 3 and rep.outcomes[0].faces_found == 1
        assert rep.outcomes[1].error and rep.outcomes[3].error and rep.outcomes[1].template_id is None
        assert all(o.face is not None for o in rep.outcomes if o.ok)
        assert g.get("mixed").template_ids == rep.template_ids and g.get("mixed").metadata == {"k": 1}
        # each embedding row went to its own image's template: probing with row j finds outcome j's template
        enrolled = [o for o in rep.outcomes if o.ok]
        for row, outcome in zip(emb, enrolled, strict=True):
            best = g.identify_embeddings(row, matcher.model_id, threshold=0.5)[0].candidates[0]
            assert best.template_id == outcome.template_id and best.similarity > 0.999


def test_enroll_prepared_reorders_nothing(tmp_path: Path, batch, matcher) -> None:  # type: ignore[no-untyped-def]
    """Swapped embedding rows are written as given: the row for image i is image i's template (no re-embedding)."""
    _, prepared, emb, quals = batch
    swapped = emb[[2, 1, 0]]
    with Gallery(tmp_path / "g.fmg", matcher=matcher) as g:
        rep = g.enroll_prepared(
            "x", prepared, swapped, sources=SOURCES, model_id=matcher.model_id, create=True, qualities=quals
        )
        obama_tid = rep.outcomes[0].template_id
        hit = g.identify_embeddings(emb[0], matcher.model_id, threshold=0.5)[0].candidates[0]
        assert hit.template_id != obama_tid  # obama's true embedding is now stored under biden's outcome


def test_multi_face_reject(tmp_path: Path, batch, matcher) -> None:  # type: ignore[no-untyped-def]
    _, prepared, emb, quals = batch
    with Gallery(tmp_path / "r.fmg", matcher=matcher, multi_face="reject") as g:
        rep = g.enroll_prepared(
            "r", prepared, emb, sources=SOURCES, model_id=matcher.model_id, create=True, qualities=quals
        )
        assert [o.status for o in rep.outcomes] == [
            "enrolled",
            "no_face",
            "multiple_faces",
            "invalid_image",
            "enrolled",
        ]
        assert rep.outcomes[2].faces_found == 3 and "reject" in (rep.outcomes[2].error or "")
        assert len(g.get("r").template_ids) == 2
        # the group photo alone: nothing enrolled -> MultipleFacesError with the report, nothing written
        with pytest.raises(MultipleFacesError) as err:
            g.enroll_prepared(
                "group",
                prepared[2:3],
                emb[1:2],
                sources=[GROUP],
                model_id=matcher.model_id,
                create=True,
                qualities=quals[1:2],
            )
        assert err.value.details["report"]["outcomes"][0]["status"] == "multiple_faces" and "group" not in g
        # through enroll(): the same policy
        rep2 = g.enroll("team", [batch[0][2], batch[0][0]])
        assert [o.status for o in rep2.outcomes] == ["multiple_faces", "enrolled"]


def test_a_multiple_faces_error_from_preparation_is_an_outcome(tmp_path: Path, batch, matcher) -> None:  # type: ignore[no-untyped-def]
    _, prepared, emb, quals = batch
    many = MultipleFacesError("3 faces found", faces=3)
    with Gallery(tmp_path / "m.fmg", matcher=matcher) as g:
        rep = g.enroll_prepared(
            "m",
            [many, prepared[0]],
            emb[:1],
            sources=["a", "b"],
            model_id=matcher.model_id,
            create=True,
            qualities=quals[:1],
        )
        assert [(o.status, o.faces_found) for o in rep.outcomes] == [("multiple_faces", 3), ("enrolled", 1)]


def test_nothing_enrolled_raises_with_the_report(tmp_path: Path, batch, matcher) -> None:  # type: ignore[no-untyped-def]
    _, prepared, _, _ = batch
    failures = [prepared[1], prepared[3]]
    empty = np.zeros((0, matcher.dim), np.float32)
    with Gallery(tmp_path / "n.fmg", matcher=matcher) as g:
        with pytest.raises(NoFaceError) as err:
            g.enroll_prepared(
                "ghost", failures, empty, sources=["#0", "#1"], model_id=matcher.model_id, create=True, qualities=[]
            )
        report = err.value.details["report"]
        assert [o["status"] for o in report["outcomes"]] == ["no_face", "invalid_image"]
        assert report["created"] is False and report["template_ids"] == []
        assert err.value.details["identity_id"] == "ghost"
        with pytest.raises(InvalidImageError):
            g.enroll_prepared(
                "ghost", [prepared[3]], empty, sources=["#0"], model_id=matcher.model_id, create=True, qualities=[]
            )
        assert "ghost" not in g and len(g) == 0 and g.num_templates == 0


def test_strict_writes_nothing_unless_every_image_gives_a_template(tmp_path: Path, batch, matcher) -> None:  # type: ignore[no-untyped-def]
    _, prepared, emb, quals = batch
    with Gallery(tmp_path / "s.fmg", matcher=matcher) as g:
        with pytest.raises(NoFaceError) as err:
            g.enroll_prepared(
                "s",
                prepared,
                emb,
                sources=SOURCES,
                model_id=matcher.model_id,
                create=True,
                strict=True,
                qualities=quals,
            )
        assert err.value.details["report"]["created"] is False and "s" not in g and g.num_templates == 0
        ok = [prepared[0], prepared[4]]
        rep = g.enroll_prepared(
            "s",
            ok,
            emb[[0, 2]],
            sources=["a", "b"],
            model_id=matcher.model_id,
            create=True,
            strict=True,
            qualities=[quals[0], quals[2]],
        )
        assert rep.ok and len(rep.template_ids) == 2


def test_enroll_prepared_refuses_inconsistent_calls(tmp_path: Path, batch, matcher) -> None:  # type: ignore[no-untyped-def]
    _, prepared, emb, quals = batch
    mid = matcher.model_id
    with Gallery(tmp_path / "b.fmg", matcher=matcher) as g:
        with pytest.raises(InvalidArgumentError):  # one row per PreparedImage item
            g.enroll_prepared("b", prepared, emb[:2], sources=SOURCES, model_id=mid, create=True, qualities=quals[:2])
        with pytest.raises(InvalidArgumentError):
            g.enroll_prepared("b", prepared, emb, sources=SOURCES[:4], model_id=mid, create=True, qualities=quals)
        with pytest.raises(InvalidArgumentError):
            g.enroll_prepared("b", [], emb[:0], sources=[], model_id=mid, create=True, qualities=[])
        with pytest.raises(InvalidArgumentError):
            g.enroll_prepared(
                "b", ["image.jpg"], emb[:1], sources=["a"], model_id=mid, create=True, qualities=quals[:1]
            )  # type: ignore[list-item]
        with pytest.raises(ModelMismatchError):
            g.enroll_prepared(
                "b", prepared, emb, sources=SOURCES, model_id="another-model", create=True, qualities=quals
            )
        other = ModelMismatchError("not an image error")  # any other FacematchError propagates as it is
        with pytest.raises(ModelMismatchError) as err:
            g.enroll_prepared(
                "b", [prepared[0], other], emb[:1], sources=["a", "b"], model_id=mid, create=True, qualities=quals[:1]
            )
        assert err.value is other
        assert "b" not in g and g.num_templates == 0
        first = {"sources": ["a"], "model_id": mid, "qualities": quals[:1]}
        g.enroll_prepared("b", prepared[:1], emb[:1], create=True, **first)
        with pytest.raises(DuplicateIdentityError):
            g.enroll_prepared("b", prepared[:1], emb[:1], create=True, **first)
        with pytest.raises(IdentityNotFoundError):
            g.enroll_prepared("nobody", prepared[:1], emb[:1], create=False, **first)
        with pytest.raises(InvalidArgumentError):  # metadata belongs to creation
            g.enroll_prepared("b", prepared[:1], emb[:1], metadata={"a": 1}, create=False, **first)
        with pytest.raises(InvalidArgumentError, match="qualities"):  # the quality gate needs the faces' quality
            g.enroll_prepared("b", prepared[:1], emb[:1], sources=["a"], model_id=mid, create=False)
        added = g.enroll_prepared(
            "b", prepared[4:], emb[2:], sources=["biden.jpg"], model_id=mid, create=False, qualities=quals[2:]
        )
        assert not added.created and g.get("b").num_templates == 2


def test_enroll_is_the_composition(tmp_path: Path, batch, matcher) -> None:  # type: ignore[no-untyped-def]
    """Gallery.enroll gives the report enroll_prepared gives for the same prepared images, and the same templates."""
    images, prepared, emb, quals = batch
    with Gallery(tmp_path / "c.fmg", matcher=matcher) as g:
        direct = g.enroll("a", images, sources=SOURCES)
        composed = g.enroll_prepared(
            "b", prepared, emb, sources=SOURCES, model_id=matcher.model_id, create=True, qualities=quals
        )
        strip = [(o.status, o.source, o.faces_found, o.error) for o in direct.outcomes]
        assert strip == [(o.status, o.source, o.faces_found, o.error) for o in composed.outcomes]
        for a, b in zip(direct.template_ids, composed.template_ids, strict=True):
            hits = g.identify_embeddings(emb[composed.template_ids.index(b)], matcher.model_id, k=2, threshold=0.5)
            assert {c.template_id for c in hits[0].candidates} == {a, b}
            assert all(c.similarity > 0.999 for c in hits[0].candidates)


def test_check_enrollable(tmp_path: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "e.fmg"
    with Gallery(path, matcher=matcher) as g:
        assert g.check_enrollable("Ren\u0065\u0301e", create=True) == "Ren\u00e9e"  # normalised (NFC)
        g.enroll_embeddings("Ren\u00e9e", np.ones((1, matcher.dim), np.float32), matcher.model_id)
        with pytest.raises(DuplicateIdentityError) as err:
            g.check_enrollable("Rene\u0301e", create=True)
        assert "add templates to it instead" in err.value.message and "add_faces" not in err.value.message
        assert g.check_enrollable("Rene\u0301e", create=False) == "Ren\u00e9e"
        with pytest.raises(IdentityNotFoundError):
            g.check_enrollable("nobody", create=False)
        with pytest.raises(InvalidArgumentError):
            g.check_enrollable("a/b", create=True)
    with pytest.raises(GalleryError):  # closed
        g.check_enrollable("x", create=True)
    with Gallery(path, read_only=True) as reader:
        with pytest.raises(GalleryError) as ro:
            reader.check_enrollable("x", create=True)
        assert "read-only" in ro.value.message


def test_add_templates_and_the_deprecated_add_faces(tmp_path: Path, wild_dir: Path, matcher) -> None:  # type: ignore[no-untyped-def]
    with Gallery(tmp_path / "a.fmg", matcher=matcher) as g:
        g.enroll("Jose\u0301", [wild_dir / "obama.jpg"])  # decomposed "é"
        rep = g.add_templates("Jos\u00e9", [wild_dir / "obama2.jpg"])  # precomposed: the same identity
        assert not rep.created and rep.identity_id == "Jos\u00e9" and rep.outcomes[0].source == "obama2.jpg"
        with pytest.warns(DeprecationWarning, match="add_templates"):
            old = g.add_faces("Jos\u00e9", [wild_dir / "obama3.jpg"], sources=["third"])
        assert old.outcomes[0].source == "third" and old.ok
        assert g.get("Jose\u0301").num_templates == 3
        res = g.identify(wild_dir / "obama4.jpg", threshold=0.3)
        assert res.identity_id == "Jos\u00e9"
        with pytest.raises(IdentityNotFoundError):
            g.add_templates("nobody", [wild_dir / "obama.jpg"])
        with pytest.raises(DuplicateIdentityError):
            g.enroll("Jos\u00e9", [wild_dir / "obama.jpg"])
