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
    no_progress: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verification (ROC, EER, TAR@FMR), identification (rank-k, DIR@FPIR), fairness and hypersphere health."""
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
    if d.failures:
        lines.append(f"  {len(d.failures)} image(s) without an embedding (listed in the report)")
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
    as_json: JsonOpt = False,
) -> None:
    """10-fold accuracy, AUC, EER and TAR@FMR on a list of pairs; images without a face reported apart."""
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


__all__ = ["calibrate", "eval_app"]
