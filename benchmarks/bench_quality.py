"""Face quality (issue 13): the targets and the measurements behind the default policies.

Sections (all by default; ``--section`` picks some):

* ``erc``: the unified score's held-out error-versus-reject result on celeb24 (5-fold by
  identity, as ``facematch quality-fit`` computes it) against every component and random
  rejection, at 10 % and 20 % rejection;
* ``degradations``: the share of celeb24 images whose degraded copy scores below the original,
  for Gaussian blur (sigma 2 on the 112 crop), down-up scaling to 28x28, under-exposure (x0.25)
  and JPEG quality 10; with the card's model and with each fold's held-out model;
* ``latency``: ``verify`` of bench_sdk.py's photo pairs with quality components on and off
  (``FaceMatcher(quality=...)``), whole passes alternating, in one run;
* ``policy``: what the default limits rest on: FNMR against the original images when faces
  are smaller (inter-ocular distance), blurrier, darker; FNMR by unified score and |yaw| bin;
  the components of every face in ../shared/data/wild.

    python benchmarks/bench_quality.py [--section erc --section latency ...] [--json out.json] [--md out.md]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facematch import FaceMatcher
from facematch.calibration import thresholds_at_fmr
from facematch.eval import erc as E
from facematch.eval.data import list_identity_dir
from facematch.eval.embed import embed_files
from facematch.eval.quality import DEFAULT_FEATURES, assess_set, component_table, feature_matrix
from facematch.quality import FaceQuality, assess, goodness, landmark_model
from facematch.types import Detections, PreparedImage

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEGRADATIONS = ("blur_sigma2", "downup_28", "exposure_x0.25", "jpeg_q10")


def degrade(crop: np.ndarray, kind: str) -> np.ndarray:
    if kind == "blur_sigma2":
        return cv2.GaussianBlur(crop, (0, 0), 2.0)
    if kind == "downup_28":
        small = cv2.resize(crop, (28, 28), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR)
    if kind == "exposure_x0.25":
        return np.clip(np.rint(crop.astype(np.float32) * 0.25), 0, 255).astype(np.uint8)
    if kind == "jpeg_q10":
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 10])
        assert ok
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)
    raise ValueError(kind)


def aligned(crops: np.ndarray) -> PreparedImage:
    return PreparedImage(Detections.empty(), crops, len(crops), (crops.shape[2], crops.shape[1]), aligned=True)


class Celeb:
    """celeb24 crops, embeddings, the FMR-1e-3 threshold and each image's quality, computed once."""

    def __init__(self, m: FaceMatcher, root: Path, mirror: bool, pose106: bool) -> None:
        self.ids = list_identity_dir(root)
        self.emb = embed_files(m, self.ids.paths, detect=False, progress=False)
        assert self.emb.ok.all(), "every celeb24 crop embeds"
        self.x, self.y = self.emb.vectors, self.ids.labels
        self.crops = np.stack([cv2.imread(str(p), cv2.IMREAD_COLOR) for p in self.ids.paths])
        sims = self.x @ self.x.T
        iu = np.triu_indices(len(self.y), 1)
        same = self.y[iu[0]] == self.y[iu[1]]
        self.threshold = float(thresholds_at_fmr(sims[iu][~same], [1e-3])[0])
        self.pairs = E.GenuinePairs.of(self.x, self.y)
        t = time.perf_counter()
        q = assess_set(m, self.emb, detect=False, mirror=mirror, pose106=pose106)
        self.assess_s = time.perf_counter() - t
        self.qualities: list[FaceQuality] = [v for v in q if v is not None]
        self.folds = E.identity_folds(self.y, 5, 0)
        self.target, self.weight = E.image_success(self.pairs, self.threshold)

    def fold_models(
        self, features: tuple[str, ...], l2: float
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
        """(mean, std, weights, bias) of the model fitted without each fold."""
        x = feature_matrix(features, self.qualities)
        out = []
        for f in range(5):
            train = self.folds != f
            mean, std = E.standardise(x[train])
            w, b = E.fit_logistic((x[train] - mean) / std, self.target[train], self.weight[train], l2)
            out.append((mean, std, w, b))
        return out


def fnmr_vs_originals(c: Celeb, vectors: np.ndarray, index: np.ndarray) -> float:
    """FNMR at the threshold of images ``index`` (embedded as ``vectors``) against the other original images of
    their identity."""
    fails = total = 0
    for v, i in zip(vectors, index, strict=True):
        mates = np.flatnonzero(c.y == c.y[i])
        mates = mates[mates != i]
        s = c.x[mates] @ v
        fails += int((s < c.threshold).sum())
        total += s.size
    return fails / max(total, 1)


# ---- sections --------------------------------------------------------------------------------


def section_erc(m: FaceMatcher, c: Celeb) -> dict[str, Any]:
    block = m.embedder_card.quality
    features = block.features if block is not None else DEFAULT_FEATURES
    l2 = block.l2 if block is not None else 1.0
    x = feature_matrix(features, c.qualities)
    logits = E.out_of_fold_logits(x, c.target, c.weight, c.folds, l2)
    reject = E.DEFAULT_REJECT
    curves = {"unified": E.erc(logits, c.pairs, c.threshold, reject, c.folds)}
    for name, col in component_table(c.qualities).items():
        curves[name] = E.erc(goodness(name, col), c.pairs, c.threshold, reject, c.folds)
    curves["random"] = E.erc_random(c.pairs, c.threshold, reject, groups=c.folds)
    rows = {
        k: {
            "fnmr_0": float(v[0]),
            "fnmr_10": float(v[10]),
            "fnmr_20": float(v[20]),
            "cut_10": E.fnmr_cut(v, reject, 0.1),
            "cut_20": E.fnmr_cut(v, reject, 0.2),
            "area": E.area(reject, v),
        }
        for k, v in curves.items()
    }
    comps = {k: v for k, v in rows.items() if k not in ("unified", "random")}
    u = rows["unified"]
    return {
        "features": list(features),
        "threshold": c.threshold,
        "n_images": len(c.y),
        "n_genuine_pairs": len(c.pairs),
        "curves": rows,
        "target_cut_10_at_least_45pct": u["cut_10"] >= 0.45,
        "unified_below_every_component_at_10": all(u["fnmr_10"] < r["fnmr_10"] for r in comps.values()),
        "unified_below_every_component_at_20": all(u["fnmr_20"] < r["fnmr_20"] for r in comps.values()),
        "best_component_at_10": min(comps, key=lambda k: comps[k]["fnmr_10"]),
        "best_component_at_20": min(comps, key=lambda k: comps[k]["fnmr_20"]),
    }


def section_degradations(m: FaceMatcher, c: Celeb) -> dict[str, Any]:
    card = m.embedder_card
    block = card.quality
    assert block is not None, "the card needs a quality block (facematch quality-fit)"
    orig = np.array([q.unified for q in c.qualities], np.float64)
    models = c.fold_models(block.features, block.l2)
    x0 = feature_matrix(block.features, c.qualities)
    held0 = np.empty(len(c.y))
    for f, (mean, std, w, b) in enumerate(models):
        sel = c.folds == f
        held0[sel] = ((x0[sel] - mean) / std) @ w + b
    out: dict[str, Any] = {}
    for kind in DEGRADATIONS:
        crops = np.stack([degrade(cr, kind) for cr in c.crops])
        emb, norms = m.embed_crops(crops)
        q = assess(aligned(crops), norms, card)
        deg = np.array([v.unified for v in q], np.float64)
        x1 = feature_matrix(block.features, q)
        held1 = np.empty(len(c.y))
        for f, (mean, std, w, b) in enumerate(models):
            sel = c.folds == f
            held1[sel] = ((x1[sel] - mean) / std) @ w + b
        comp = {
            name: float(
                np.mean(
                    goodness(name, np.array([getattr(v, name) for v in q]))
                    < goodness(name, np.array([getattr(v, name) for v in c.qualities]))
                )
            )
            for name in ("feature_norm", "sharpness", "contrast", "brightness")
        }
        out[kind] = {
            "ranked_below_card_model": float(np.mean(deg < orig)),
            "ranked_below_held_out_models": float(np.mean(held1 < held0)),
            "median_unified_original": float(np.median(orig)),
            "median_unified_degraded": float(np.median(deg)),
            "fnmr_original": fnmr_vs_originals(c, c.x, np.arange(len(c.y))),
            "fnmr_degraded_vs_originals": fnmr_vs_originals(c, emb, np.arange(len(c.y))),
            "ranked_below_by_component": comp,
            "target_95pct_met": bool(np.mean(deg < orig) >= 0.95),
        }
    return out


def _pairs(images: Path) -> list[tuple[Path, Path]]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_sdk import portrait_pairs

    return portrait_pairs(images)[0]


def section_latency(rounds: int, images: Path) -> dict[str, Any]:
    pairs = _pairs(images)
    on, off = FaceMatcher(quality=True), FaceMatcher(quality=False)
    for a, b in pairs[:3]:  # warm up both
        on.verify(a, b)
        off.verify(a, b)
    lat: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds):
        order = (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on))
        for name, matcher in order:  # whole passes alternate (see bench_sdk.py on ONNX Runtime's spinning threads)
            for a, b in pairs:
                t = time.perf_counter()
                res = matcher.verify(a, b)
                lat[name].append((time.perf_counter() - t) * 1000.0)
                assert (res.quality1 is not None) == (name == "on")
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    mean = {k: statistics.fmean(v) for k, v in lat.items()}
    # the components alone, on the prepared faces of the same photos
    prep = [on.prepare(p) for p in sorted({p for pair in pairs for p in pair})]
    norms = [on.embed_crops(p.crops)[1] for p in prep]
    t = time.perf_counter()
    n = 0
    for _ in range(20):
        for p, nm in zip(prep, norms, strict=True):
            on.assess(p, nm)
            n += 1
    per_face = (time.perf_counter() - t) * 1000.0 / n
    marks = landmark_model()
    t = time.perf_counter()
    for p in prep:
        marks.predict_crops(p.crops, np.array([17, 10, 96, 112], np.float32))
    pose106 = (time.perf_counter() - t) * 1000.0 / len(prep)
    crops = np.concatenate([p.crops for p in prep])
    t = time.perf_counter()
    for cr in crops:
        on.embed_crops(cr[None])
    mirror = (time.perf_counter() - t) * 1000.0 / len(crops)
    return {
        "pairs": len(pairs),
        "rounds": rounds,
        "verify_ms_p50_quality_on": round(p50["on"], 2),
        "verify_ms_p50_quality_off": round(p50["off"], 2),
        "verify_ms_mean_quality_on": round(mean["on"], 2),
        "verify_ms_mean_quality_off": round(mean["off"], 2),
        "overhead_p50": round(p50["on"] / p50["off"] - 1.0, 4),
        "overhead_mean": round(mean["on"] / mean["off"] - 1.0, 4),
        "target_at_most_15pct_met": p50["on"] / p50["off"] - 1.0 <= 0.15,
        "components_ms_per_face": round(per_face, 3),
        "optional_pose106_ms_per_face": round(pose106, 2),
        "optional_mirror_ms_per_face": round(mirror, 2),
    }


def section_policy(m: FaceMatcher, c: Celeb, per_identity: int) -> dict[str, Any]:
    card = m.embedder_card
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.permutation(np.flatnonzero(c.y == k))[:per_identity] for k in np.unique(c.y)])
    iod_112 = 35.24  # inter-ocular distance of the 112-px ArcFace template
    out: dict[str, Any] = {"images": int(pick.size), "fnmr_original": fnmr_vs_originals(c, c.x[pick], pick)}

    def study(name: str, levels: list[float], make: Any, measure: str) -> None:
        rows = []
        for level in levels:
            crops = np.stack([make(c.crops[i], level) for i in pick])
            emb, norms = m.embed_crops(crops)
            q = assess(aligned(crops), norms, card)
            rows.append(
                {
                    name: level,
                    "fnmr_vs_originals": fnmr_vs_originals(c, emb, pick),
                    f"median_{measure}": float(np.median([getattr(v, measure) for v in q])),
                    "median_unified": float(np.median([v.unified for v in q if v.unified is not None])),
                }
            )
        out[name] = rows

    def shrink(crop: np.ndarray, iod: float) -> np.ndarray:
        side = max(2, int(round(112 * iod / iod_112)))
        small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR)

    study("inter_ocular_px", [6, 8, 10, 12, 14, 16, 20, 24, 30, 35.24], shrink, "sharpness")
    study(
        "blur_sigma",
        [0.0, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0],
        lambda cr, s: cr if s == 0 else cv2.GaussianBlur(cr, (0, 0), s),
        "sharpness",
    )
    study(
        "exposure_factor",
        [1.0, 0.6, 0.4, 0.25, 0.15, 0.1],
        lambda cr, f: np.clip(np.rint(cr.astype(np.float32) * f), 0, 255).astype(np.uint8),
        "brightness",
    )
    # FNMR of the genuine comparisons of the images in each unified-score bin (held-out scores)
    block = card.quality
    if block is not None:
        x = feature_matrix(block.features, c.qualities)
        logits = E.out_of_fold_logits(x, c.target, c.weight, c.folds, block.l2)
        held = 100.0 / (1.0 + np.exp(-logits))
        out["unified_bins"] = _bins(c, held, [0, 70, 80, 85, 90, 95, 100.01])
    yaw = [q.yaw_deg for q in c.qualities]
    if all(v is not None for v in yaw):
        out["abs_yaw_bins"] = _bins(c, np.abs(np.array(yaw, np.float64)), [0, 10, 20, 30, 45, 90])
        pitch = np.abs(np.array([q.pitch_deg for q in c.qualities], np.float64))
        out["abs_pitch_bins"] = _bins(c, pitch, [0, 10, 20, 30, 45, 90])
    return out


def _bins(c: Celeb, values: np.ndarray, edges: list[float]) -> list[dict[str, Any]]:
    """Images per bin of ``values`` and the FNMR of their genuine comparisons (each comparison counted for both)."""
    fails = c.pairs.score < c.threshold
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sel = (values >= lo) & (values < hi)
        involve = sel[c.pairs.i] | sel[c.pairs.j]
        rows.append(
            {
                "bin": f"[{lo:g}, {hi:g})",
                "images": int(sel.sum()),
                "share": float(sel.mean()),
                "fnmr_of_their_comparisons": float(fails[involve].mean()) if involve.any() else None,
            }
        )
    return rows


def section_wild(m: FaceMatcher, wild: Path) -> list[dict[str, Any]]:
    from facematch.quality import assess_image

    rows = []
    for p in sorted(wild.iterdir()):
        if p.suffix.lower() not in (".jpg", ".png"):
            continue
        _, qs = assess_image(m, p, faces="all", max_faces=4)
        for i, q in enumerate(qs):
            rows.append({"file": p.name, "face": i, **q.to_dict()})
    return rows


# ---- report --------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Face quality results (`python benchmarks/bench_quality.py`)", "", f"Machine: {res['machine']}.", ""]
    if "erc" in res:
        e = res["erc"]
        lines += [
            "## Error versus reject on celeb24, identities held out (5-fold by identity)",
            "",
            f"FNMR at the FMR-1e-3 threshold {e['threshold']:.4f} over {e['n_genuine_pairs']:,} genuine comparisons of "
            f"{e['n_images']} images; the share is rejected within each fold; features {', '.join(e['features'])}.",
            "",
            "| measure | FNMR 0 % | FNMR 10 % | FNMR 20 % | cut @ 10 % | cut @ 20 % | area 0-30 % |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k, r in sorted(e["curves"].items(), key=lambda kv: kv[1]["area"]):
            lines.append(
                f"| {k} | {r['fnmr_0']:.4f} | {r['fnmr_10']:.4f} | {r['fnmr_20']:.4f} | {r['cut_10']:.1%} | "
                f"{r['cut_20']:.1%} | {r['area']:.5f} |"
            )
        lines += [
            "",
            "- target: rejecting 10 % cuts FNMR by >= 45 %: "
            f"**{'met' if e['target_cut_10_at_least_45pct'] else 'missed'}** ({e['curves']['unified']['cut_10']:.1%})",
            f"- unified below every component at 10 %: **{e['unified_below_every_component_at_10']}** "
            f"(best component {e['best_component_at_10']}); at 20 %: **{e['unified_below_every_component_at_20']}** "
            f"(best component {e['best_component_at_20']})",
            "",
        ]
    if "degradations" in res:
        lines += [
            "## Degraded copies ranked below their originals (celeb24, 942 images)",
            "",
            "| degradation | card model | held-out fold models | FNMR original → degraded "
            "| by feature norm | by sharpness |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k, r in res["degradations"].items():
            lines.append(
                f"| {k} | {r['ranked_below_card_model']:.1%} | {r['ranked_below_held_out_models']:.1%} | "
                f"{r['fnmr_original']:.3f} → {r['fnmr_degraded_vs_originals']:.3f} | "
                f"{r['ranked_below_by_component']['feature_norm']:.1%} | "
                f"{r['ranked_below_by_component']['sharpness']:.1%} |"
            )
        lines.append("")
    if "latency" in res:
        la = res["latency"]
        lines += [
            "## Cost",
            "",
            f"`verify` on {la['pairs']} photo pairs x {la['rounds']} rounds, whole passes alternating: p50 "
            f"{la['verify_ms_p50_quality_off']} ms without quality, {la['verify_ms_p50_quality_on']} ms with the "
            f"components: **{la['overhead_p50']:+.1%}** (mean {la['overhead_mean']:+.1%}; target <= +15 %). "
            f"Components alone: {la['components_ms_per_face']} ms per face. Optional: 106-point pose "
            f"{la['optional_pose106_ms_per_face']} ms per face, mirror consistency "
            f"{la['optional_mirror_ms_per_face']} ms per face (one embedding).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", action="append", choices=["erc", "degradations", "latency", "policy", "wild"])
    ap.add_argument("--celeb24", type=Path, default=SHARED / "celeb24")
    ap.add_argument("--wild", type=Path, default=SHARED / "wild")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-identity", type=int, default=8, help="images per identity in the policy studies")
    ap.add_argument("--mirror", action="store_true", help="add mirror consistency to the ERC components")
    ap.add_argument("--pose106", action="store_true", help="add the 106-point pose to the ERC components")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    sections = args.section or ["erc", "degradations", "latency", "policy", "wild"]
    res: dict[str, Any] = {"machine": f"{platform.machine()}, {platform.python_version()}, {sys.platform}"}
    m = FaceMatcher()
    celeb = None
    if {"erc", "degradations", "policy"} & set(sections):
        celeb = Celeb(m, args.celeb24, mirror=args.mirror, pose106=args.pose106 or "policy" in sections)
    t0 = time.perf_counter()
    for name in sections:
        t = time.perf_counter()
        if name == "erc":
            assert celeb is not None
            res["erc"] = section_erc(m, celeb)
        elif name == "degradations":
            assert celeb is not None
            res["degradations"] = section_degradations(m, celeb)
        elif name == "latency":
            res["latency"] = section_latency(args.rounds, args.wild)
        elif name == "policy":
            assert celeb is not None
            res["policy"] = section_policy(m, celeb, args.per_identity)
        elif name == "wild":
            res["wild"] = section_wild(m, args.wild)
        print(f"{name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    if args.md:
        args.md.write_text(markdown(res) + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
