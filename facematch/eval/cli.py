"""``facematch eval aligned|pairs`` and ``facematch calibrate`` (heavy imports happen inside commands).

Both are listed in ``facematch.cli.LAZY_COMMANDS`` (``eval_app`` a group, ``calibrate`` a command);
errors are reported by the command line's group in its one style (``facematch._cliutil``).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from .._cliutil import echo_json, new_app

eval_app = new_app("Measure accuracy, identification, fairness and embedding health on labelled images.")

ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Embedder card id, card JSON, or model file with a card (default pack).")
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        help="Embedding cache folder (default $FACEMATCH_CACHE_DIR or ~/.cache/facematch). Holds biometric data."
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the embedding cache.")]
FmrOpt = Annotated[
    list[float] | None,
    typer.Option("--fmr", help="Target false-match rates (FMR) to report TAR at (repeatable; default 1e-2 1e-3 1e-4)."),
]
FarAlias = Annotated[list[float] | None, typer.Option("--far", hidden=True, help="Deprecated alias of --fmr.")]
AlignedOpt = Annotated[
    bool,
    typer.Option(
        "--aligned/--detect",
        help="--aligned: the images are aligned face crops (no detection); --detect: ordinary photos, "
        "the largest face detected and aligned first.",
    ),
]  # one flag, spelled the same in every command; the default differs per command
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the whole report as JSON (errors too).")]
ErcOpt = Annotated[
    bool,
    typer.Option(
        "--erc/--no-erc",
        help="Face quality's error-versus-reject section: FNMR at the FMR-1e-3 threshold after rejecting the "
        "lowest-quality 0-30 %% of the images, for the unified score, each component and random rejection.",
    ),
]
MirrorOpt = Annotated[
    bool, typer.Option("--mirror", help="Add mirror consistency to the ERC (one extra embedding per image).")
]
Pose106Opt = Annotated[bool, typer.Option("--pose106", help="Add the 106-point pose to the ERC (2d106det).")]
QuietOpt = Annotated[bool, typer.Option("--no-progress", help="No progress bars.")]


def _cache_dir(cache_dir: Path | None, no_cache: bool) -> Path | None:
    from .cache import default_cache_dir

    if no_cache:
        return None
    return cache_dir if cache_dir is not None else default_cache_dir()


def _matcher(model: str | None, detector: str | None = None) -> Any:
    from ..matcher import FaceMatcher

    return FaceMatcher(detector=detector, embedder=model)


def _renamed(value: Any, old_value: Any, new: str, old: str) -> Any:
    """``value`` of option ``new``, or of its deprecated spelling ``old`` (with a one-line notice on stderr)."""
    from ..errors import InvalidArgumentError

    if old_value is None or old_value == []:
        return value
    typer.echo(f"warning: {old} is deprecated; use {new} (FMR, the false-match rate)", err=True)
    if value is not None and value != []:
        raise InvalidArgumentError(f"give {new} or its deprecated alias {old}, not both")
    return old_value


def _fmrs(fmrs: list[float] | None, fars: list[float] | None) -> tuple[float, ...]:
    from ..calibration import check_rate
    from .protocols import DEFAULT_FMRS

    given = _renamed(fmrs, fars, "--fmr", "--far")
    return tuple(check_rate(f, "--fmr") for f in given) if given else DEFAULT_FMRS


@eval_app.command("aligned")
def aligned_cmd(
    directory: Annotated[Path, typer.Argument(help="One folder per identity holding face images.")],
    meta: Annotated[Path | None, typer.Option(help="CSV with an 'identity' column and group columns.")] = None,
    group_col: Annotated[str, typer.Option(help="Column of --meta to compare groups by.")] = "gender",
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option(help="Report folder: report.json, report.md, PNG plots.")] = Path("report"),
    aligned: AlignedOpt = True,
    detector: Annotated[str | None, typer.Option(help="Detector card for --detect (default pack).")] = None,
    fmr: FmrOpt = None,
    far: FarAlias = None,
    target_fmr: Annotated[
        float | None, typer.Option(help="FMR whose threshold on all pairs is the fairness threshold (default 1e-3).")
    ] = None,
    target_far: Annotated[
        float | None, typer.Option("--target-far", hidden=True, help="Deprecated alias of --target-fmr.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Fairness threshold instead of the one at --target-fmr.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the gallery and hold-out splits.")] = 0,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    explain: Annotated[
        int,
        typer.Option(
            "--explain",
            min=0,
            metavar="N",
            help="Add the N hardest false non-matches and N closest false matches at the card's default threshold, "
            "each explained with its similarity maps (a 'why did these fail' section).",
        ),
    ] = 0,
    no_progress: QuietOpt = False,
    erc: ErcOpt = True,
    mirror: MirrorOpt = False,
    pose106: Pose106Opt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verification (ROC, EER, TAR@FMR), identification (rank-k, DIR@FPIR), fairness, hypersphere health and
    face quality (error versus reject)."""
    from .report import to_jsonable
    from .runner import DEFAULT_TARGET_FMR, run_aligned

    if meta is not None and not meta.is_file():
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"--meta file {meta} not found")
    fmrs = _fmrs(fmr, far)
    target = _renamed(target_fmr, target_far, "--target-fmr", "--target-far")
    rep = run_aligned(
        _matcher(model, detector),
        directory,
        out,
        meta=meta,
        group_col=group_col,
        detect=not aligned,
        cache_dir=_cache_dir(cache_dir, no_cache),
        fmrs=fmrs,
        target_fmr=DEFAULT_TARGET_FMR if target is None else target,
        threshold=threshold,
        seed=seed,
        plots=not no_plots,
        progress=not no_progress,
        erc=erc,
        mirror=mirror,
        pose106=pose106,
        explain=explain,
    )
    if as_json:
        echo_json(to_jsonable(rep))
        return
    typer.echo(aligned_summary(rep, out))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:.2f}%"


def _sci(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def fmr_key(rate: float) -> str:
    from ..calibration import fmr_key as key  # numpy, pydantic: not at import time

    return key(rate)


def _at_fmr(points: Any) -> str:
    return ", ".join(
        f"{_pct(p.tar)} @ FMR {fmr_key(p.target_fmr)}"
        if p.resolvable
        else f"n/a @ FMR {fmr_key(p.target_fmr)} (< 1/{p.n_impostor:,})"
        for p in points
    )


def _erc_line(section: Any) -> str:
    """One line of the ERC: FNMR cut at 10 % rejection by the unified score, the feature norm and random."""
    parts = []
    for name in ("unified", "feature_norm", "random"):
        c = section.curve(name)
        if c is not None:
            parts.append(f"{name} {'n/a' if c.cut_10 is None else format(c.cut_10, '.1%')}")
    return (
        f"quality ERC (FNMR {_pct(section.fnmr_at_0)} at threshold {section.threshold:.4f}): rejecting 10% cuts it by "
        + ", ".join(parts)
    )


def aligned_summary(rep: Any, out: Path) -> str:
    """The few numbers of an ``eval aligned`` report, rounded for reading (all of them: report.json)."""
    v, i, d = rep.verification, rep.identification, rep.dataset
    lines = [
        f"{rep.model.id} on {Path(d.root).name}: {d.n_embedded}/{d.n_images} images embedded; "
        f"{v.n_genuine:,} genuine / {v.n_impostor:,} impostor pairs",
        f"  verification: AUC {v.auc:.5f}, EER {_pct(v.eer)}; TAR {_at_fmr(v.operating_points)}",
    ]
    ident = "  identification: " + ", ".join(f"rank-{k} {_pct(val)}" for k, val in i.closed_set.rank.items())
    if i.open_set is not None:
        ident += "; DIR " + ", ".join(
            f"{_pct(p.dir)} @ FPIR {fmr_key(p.target_fpir)}" if p.resolvable else f"n/a @ FPIR {fmr_key(p.target_fpir)}"
            for p in i.open_set.points
        )
    lines.append(ident)
    if rep.fairness is not None:
        f = rep.fairness.result
        lines.append(
            f"  fairness by {rep.fairness.column} at threshold {f.shared_threshold:.4f}: "
            + "; ".join(f"{g.group} FNMR {_pct(g.fnmr)} FMR {_sci(g.fmr)}" for g in f.groups)
        )
    if rep.erc is not None:
        lines.append("  " + _erc_line(rep.erc))
    if d.failures:
        lines.append(f"  {len(d.failures)} image(s) without an embedding (listed in the report)")
    if rep.explanations is not None:
        e = rep.explanations
        lines.append(
            f"  explained {len(e.false_non_matches)} false non-match(es) and {len(e.false_matches)} false "
            f"match(es) at threshold {e.threshold:.4f} (in the report)"
        )
    plots = [name for kind, name in rep.files.items()]
    lines.append(f"report: {out / 'report.md'}" + (f" (plots: {', '.join(plots)})" if plots else ""))
    return "\n".join(lines)


def pairs_summary(rep: Any, out: Path) -> str:
    """The few numbers of an ``eval pairs`` report, rounded for reading (all of them: report.json)."""
    r = rep.result
    lines = [
        f"{rep.model.id}: {r.n_pairs:,} pairs, accuracy {_pct(r.accuracy.mean_accuracy)} ± "
        f"{_pct(r.accuracy.std_accuracy)} ({len(r.accuracy.fold_accuracy)}-fold), AUC {r.auc:.5f}, EER {_pct(r.eer)}",
        f"  TAR {_at_fmr(r.operating_points)}",
    ]
    if rep.failures:
        lines.append(f"  no embedding for {len(rep.failures)} image(s); {r.n_failed_pairs} pair(s) affected:")
        lines += [f"    {fl.path}: {fl.status}" for fl in rep.failures]
    if rep.excluded_entries:
        lines.append(f"  {len(rep.excluded_entries)} entr(y/ies) gave no pairs (listed in the report)")
    if rep.erc is not None:
        lines.append("  " + _erc_line(rep.erc))
    if "pairs_csv" in rep.files:
        lines.append(f"  every pair with its decisions: {out / rep.files['pairs_csv']}")
    plots = [name for kind, name in rep.files.items() if kind != "pairs_csv"]
    lines.append(f"report: {out / 'report.md'}" + (f" (plots: {', '.join(plots)})" if plots else ""))
    return "\n".join(lines)


@eval_app.command("pairs")
def pairs_cmd(
    file: Annotated[Path, typer.Argument(help="LFW pairs.txt, a CSV a,b,same, or a labels CSV file,identities.")],
    root: Annotated[
        Path | None, typer.Option(help="Folder the image names are relative to (default: FILE's folder).")
    ] = None,
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("report-pairs"),
    aligned: AlignedOpt = False,
    detector: Annotated[str | None, typer.Option(help="Detector card for --detect (default pack).")] = None,
    fmr: FmrOpt = None,
    far: FarAlias = None,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment when FILE defines no folds.")] = 0,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    no_progress: QuietOpt = False,
    erc: ErcOpt = True,
    mirror: MirrorOpt = False,
    pose106: Pose106Opt = False,
    as_json: JsonOpt = False,
) -> None:
    """10-fold accuracy, AUC, EER and TAR@FMR on a list of pairs; images without a face reported apart;
    face quality's error versus reject over the genuine pairs."""
    from .report import to_jsonable
    from .runner import run_pairs

    fmrs = _fmrs(fmr, far)
    rep = run_pairs(
        _matcher(model, detector),
        file,
        out,
        root=root,
        detect=not aligned,
        cache_dir=_cache_dir(cache_dir, no_cache),
        fmrs=fmrs,
        seed=seed,
        plots=not no_plots,
        progress=not no_progress,
        erc=erc,
        mirror=mirror,
        pose106=pose106,
    )
    if as_json:
        echo_json(to_jsonable(rep))
        return
    typer.echo(pairs_summary(rep, out))


def calibrate(
    directory: Annotated[
        Path, typer.Argument(help="Calibration set: one folder per identity (aligned crops, or photos with --detect).")
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="Embedder card id, card JSON, or model file with a card.")
    ] = None,
    set_name: Annotated[
        str | None, typer.Option(help="Name of the calibration set (default: the folder name).")
    ] = None,
    fmr: Annotated[
        list[float] | None,
        typer.Option("--fmr", help="Target FMRs to store thresholds for (repeatable; default 1e-2 1e-3 1e-4)."),
    ] = None,
    default_fmr: Annotated[float, typer.Option(help="The card's default operating FMR.")] = 1e-3,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Store the calibrated card: for a packaged card, as your own copy in $FACEMATCH_MODEL_DIR or "
            "~/.config/facematch/models/ID.json, which card lookup finds first (the installed card is left alone).",
        ),
    ] = False,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="With --write: update the card file it was loaded from.")
    ] = False,
    card_out: Annotated[Path | None, typer.Option("--out", help="Write the calibrated card here instead.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also save the calibration curve as a PNG.")] = None,
    aligned: AlignedOpt = True,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    no_progress: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure genuine/impostor scores on a calibration set and store thresholds + the FMR curve in a model card."""
    from ..calibration import check_rate
    from ..errors import FacematchError, InvalidArgumentError
    from .calibrate import card_destination, measure_calibration, write_calibration
    from .report import to_jsonable

    fmrs = tuple(check_rate(f, "--fmr") for f in fmr) if fmr else (1e-2, 1e-3, 1e-4)
    check_rate(default_fmr, "--default-fmr")
    if in_place and (not write or card_out is not None):
        raise InvalidArgumentError("--in-place goes with --write (and not with --out)")
    name = set_name or directory.resolve().name
    argv = ["facematch", "calibrate", str(directory)]
    if model:
        argv += ["--model", model]
    if set_name:
        argv += ["--set-name", set_name]
    for f in fmr or []:
        argv += ["--fmr", f"{f:g}"]
    if default_fmr != 1e-3:
        argv += ["--default-fmr", f"{default_fmr:g}"]
    if not aligned:
        argv.append("--detect")
    argv.append("--write")
    matcher = _matcher(model)
    card = matcher.embedder_card
    if write and card_out is None:
        card_destination(card, in_place=in_place)  # refuse before the measurement, not after it
    run = measure_calibration(
        matcher,
        directory,
        set_name=name,
        command=shlex.join(argv),
        target_fmrs=fmrs,
        default_fmr=default_fmr,
        detect=not aligned,
        cache_dir=_cache_dir(cache_dir, no_cache),
        progress=not no_progress,
    )
    cal = run.calibration
    dest: Path | None = None
    if write or card_out is not None:
        dest = write_calibration(card, cal, card_out, in_place=in_place)
    if plot is not None:
        from .plots import calibration_plot

        calibration_plot(
            cal.curve_similarity, cal.curve_fmr, dict(cal.thresholds), plot, n_impostor=cal.n_impostor_pairs
        )
    if as_json:
        echo_json(
            {
                "model": matcher.model_id,
                "calibration": cal.model_dump(),
                "n_images": run.n_images,
                "failures": to_jsonable(run.failures),
                "written_to": str(dest) if dest else None,
            }
        )
        return
    typer.echo(
        f"{matcher.model_id} on {name!r}: {cal.n_genuine_pairs:,} genuine / {cal.n_impostor_pairs:,} impostor pairs "
        f"from {run.n_images} images ({len(run.failures)} without an embedding)"
    )
    for key, thr in cal.thresholds.items():
        tar = cal.tar_at_threshold.get(key)
        typer.echo(f"  FMR {key}: threshold {thr:.4f}" + (f"  TAR {_pct(tar)}" if tar is not None else ""))
    if dest is not None:
        typer.echo(f"wrote the calibrated card {card.id!r} to {dest}")
        if dest.name.endswith(".card.json"):
            typer.echo(
                "  (a sidecar card takes precedence over the ONNX metadata_props card; the ONNX file is left "
                "unchanged so its sha256 still matches)"
            )
        elif dest.resolve() != (card.card_path or dest).resolve() and card_out is None:
            typer.echo(f"  (card lookup by id finds it before {card.card_path}, which is unchanged)")
    else:
        try:
            where = str(card_destination(card))
        except FacematchError:
            where = "--out PATH, or --write --in-place"
        typer.echo(f"dry run: pass --write to store it in {where}")


def quality_fit(
    directory: Annotated[
        Path, typer.Argument(help="Calibration set: one folder per identity (aligned crops, or photos with --detect).")
    ],
    model: ModelOpt = None,
    set_name: Annotated[str | None, typer.Option(help="Name of the set (default: the folder name).")] = None,
    feature: Annotated[
        list[str] | None,
        typer.Option(
            "--feature",
            help="A feature of the logistic model (repeatable; default: log_feature_norm log_sharpness contrast "
            "brightness_deviation clipped_fraction). See facematch.quality.FEATURES.",
        ),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="Folds of identities for the held-out evaluation.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the identity folds and of the random baseline.")] = 0,
    l2: Annotated[float, typer.Option(min=0.0, help="L2 penalty on the weights (in average-image units).")] = 1.0,
    fmr: Annotated[float, typer.Option(help="The FMR whose threshold defines success (the label).")] = 1e-3,
    aligned: AlignedOpt = True,
    mirror: Annotated[
        bool, typer.Option("--mirror", help="Measure mirror consistency (one extra embedding per image).")
    ] = False,
    pose106: Annotated[bool, typer.Option("--pose106", help="Measure the pose with the 106-point model.")] = False,
    card_out: Annotated[Path | None, typer.Option("--out", help="Write the card with the fitted block here.")] = None,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Write the block into the card file the model was loaded from.")
    ] = False,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    no_progress: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit the unified quality score (a logistic model on quality components) and store it in the model card.

    The label is each image's share of genuine comparisons that succeed at the FMR threshold; the
    held-out result is a k-fold by identity cross-validation. Without --out or --in-place nothing is written.
    """
    from ..calibration import check_rate
    from ..errors import InvalidArgumentError
    from . import metrics as M
    from .calibrate import card_destination
    from .data import list_identity_dir
    from .quality import DEFAULT_FEATURES, fit_quality, write_quality
    from .report import to_jsonable
    from .runner import embed_identity_set

    check_rate(fmr, "--fmr")
    if in_place and card_out is not None:
        raise InvalidArgumentError("give --out PATH or --in-place, not both")
    features = tuple(feature) if feature else DEFAULT_FEATURES
    name = set_name or directory.resolve().name
    argv = ["facematch", "quality-fit", str(directory)]
    if model:
        argv += ["--model", model]
    if set_name:
        argv += ["--set-name", set_name]
    for f in feature or []:
        argv += ["--feature", f]
    options = (("--folds", folds, 5), ("--seed", seed, 0), ("--l2", l2, 1.0), ("--fmr", fmr, 1e-3))
    for flag, value, default in options:
        if value != default:
            argv += [flag, f"{value:g}"]
    argv += [*(["--detect"] if not aligned else []), *(["--mirror"] if mirror else [])]
    argv += ["--pose106"] if pose106 else []
    matcher = _matcher(model)
    ids = list_identity_dir(directory)
    emb, x, y = embed_identity_set(
        matcher, ids, detect=not aligned, cache_dir=_cache_dir(cache_dir, no_cache), progress=not no_progress
    )
    impostor = M.all_pair_scores(x, y).impostor
    card = matcher.embedder_card
    dest = card_out if card_out is not None else (card_destination(card, in_place=True) if in_place else None)
    if dest is not None:
        argv += ["--out", str(card_out)] if card_out is not None else ["--in-place"]
    fit = fit_quality(
        matcher,
        emb,
        ids.labels,
        impostor,
        set_name=name,
        command=shlex.join(argv),
        features=features,
        detect=not aligned,
        mirror=mirror,
        pose106=pose106,
        fmr=fmr,
        folds=folds,
        seed=seed,
        l2=l2,
    )
    written = write_quality(matcher.embedder_card, fit.block, dest) if dest is not None else None
    if as_json:
        out = {
            "model": matcher.model_id,
            "quality": fit.block.model_dump(),
            "held_out_erc": fit.oof_erc,
            "n_images": fit.n_images,
            "n_failed": fit.n_failed,
            "written_to": str(written) if written else None,
        }
        echo_json(to_jsonable(out))
        return
    b, h = fit.block, fit.block.held_out
    typer.echo(f"{matcher.model_id} on {name!r}: {b.n_images} images of {b.n_identities} identities")
    for f, w in zip(b.features, b.weights, strict=True):
        typer.echo(f"  {f:<22} weight {w:+.4f}")
    typer.echo(f"  bias {b.bias:+.4f}; label threshold {b.threshold:.6f} (FMR {b.fmr:g})")
    if h is not None:
        base = h.fnmr[0]
        for share in (0.1, 0.2):
            k = h.reject.index(share)
            cut = 1 - h.fnmr[k] / base if base > 0 else float("nan")
            norm = ""
            if h.fnmr_feature_norm is not None and base > 0:
                norm = f", feature norm alone {1 - h.fnmr_feature_norm[k] / base:.1%}"
            typer.echo(
                f"  held out ({b.fold_scheme.split(':')[0]}): rejecting {share:.0%} cuts FNMR by {cut:.1%} "
                f"({base:.4f} -> {h.fnmr[k]:.4f}{norm}; random {1 - h.fnmr_random[k] / base:.1%})"
            )
    if written is not None:
        typer.echo(f"wrote the quality block into {written}")
    else:
        typer.echo("dry run: pass --out PATH (or --in-place) to store it in a card")


__all__ = ["calibrate", "eval_app", "quality_fit"]
