"""Command-line start-up: cold runs of the real ``facematch`` entry point, hyperfine-style.

Every run is a fresh process (``facematch verify A B`` on two ordinary photos, plus
``--help``), the OS file cache warm as after any earlier use. Commands take turns run by
run (interleaved), so a busy moment on this shared machine hits them all alike. Reported
per command: median, min, max and interquartile range of the wall time, the median CPU time
(user + system, which contention inflates less) and peak RSS; the load average before and
after says how busy the machine was.

Also measured, each in a fresh interpreter: three ways to give the embedder a dynamic batch
dimension at load (rewriting the graph with ``onnx`` on every load, as before; the
once-per-install cached rewrite, as now; no rewrite at all), and a ``python -X importtime``
breakdown of ``facematch verify`` by top-level package.

    python benchmarks/bench_cli.py [--runs 15] [--images ../shared/data/wild] [--json out.json]
        [--exe ENTRY_POINT] [--baseline ENTRY_POINT]

The measured installs are byte-compiled first and run without ``PYTHONDONTWRITEBYTECODE``, as
an installed copy runs. A regular (non-editable) install of this checkout, as users have it:

    pip wheel --no-deps --no-build-isolation -w /tmp/whl . && python -m venv /tmp/fm
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/fm/lib/python3.11/site-packages/deps.pth
    /tmp/fm/bin/pip install --no-deps /tmp/whl/facematch-*.whl    # then --exe /tmp/fm/bin/facematch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 0.7  # issue 16: `facematch verify a.jpg b.jpg` in at most 0.7 s, cold


def entry_point(given: str | None = None) -> str:
    """``given``, else the installed ``facematch`` console script of this interpreter's environment."""
    exe = Path(given) if given else Path(sys.executable).parent / "facematch"
    if not exe.exists():
        sys.exit(f"no facematch entry point beside {sys.executable}; pip install -e . first")
    return str(exe)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every measured process: this one's, without ``PYTHONDONTWRITEBYTECODE``.

    With that variable set (as it is on some build machines), a module edited since its last
    ``.pyc`` is compiled from source on every run, which no installed copy does (pip compiles
    at install time); it once put ~60 ms of compilation into each measured start-up.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def compile_install(exe: str) -> None:
    """Byte-compile the facematch package behind console script ``exe``, as ``pip install`` does."""
    shebang = Path(exe).read_text(encoding="utf-8", errors="replace").splitlines()[0]
    python = shebang[2:].strip() if shebang.startswith("#!") else sys.executable
    where = subprocess.run(
        [python, "-c", "import facematch, os; print(os.path.dirname(facematch.__file__))"],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
        cwd=tempfile.gettempdir(),
    ).stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", where], check=True, env=child_env())


def run_once(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """One cold run: wall seconds, CPU seconds (user + sys) and peak RSS (MB) of the child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or child_env())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    walls = sorted(r["wall"] for r in runs)
    q = statistics.quantiles(walls, n=4) if len(walls) >= 2 else [walls[0]] * 3
    return {
        "n": len(runs),
        "median_s": statistics.median(walls),
        "min_s": walls[0],
        "max_s": walls[-1],
        "iqr_s": q[2] - q[0],
        "cpu_median_s": statistics.median(r["cpu"] for r in runs),
        "rss_mb": max(r["rss_mb"] for r in runs),
    }


def bench_commands(
    runs: int, a: Path, b: Path, baseline: str | None = None, exe: str | None = None
) -> dict[str, dict[str, float]]:
    exe = entry_point(exe)
    commands = {
        "facematch verify A B": [exe, "verify", str(a), str(b)],
        "facematch --help": [exe, "--help"],
        "facematch verify --help": [exe, "verify", "--help"],
    }
    if baseline:  # another install's entry point (e.g. a checkout before this change), run in the same turns
        commands["baseline: facematch verify A B"] = [baseline, "verify", str(a), str(b)]
        commands["baseline: facematch --help"] = [baseline, "--help"]
    for install in (exe, baseline):
        if install:
            compile_install(install)
    for argv in commands.values():  # warm-up: OS file cache, the model cache
        run_once(argv)
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    for _ in range(runs):
        for name, argv in commands.items():
            results[name].append(run_once(argv))
    # the very first run after install: an empty model cache, so the embedder's graph is rewritten once
    first = []
    for _ in range(max(3, runs // 5)):
        with tempfile.TemporaryDirectory() as tmp:
            first.append(run_once(commands["facematch verify A B"], env=child_env(FACEMATCH_CACHE_DIR=tmp)))
    results["facematch verify A B (first run: empty model cache)"] = first
    return {name: summary(r) for name, r in results.items()}


LOAD_VARIANT = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np
from facematch import runtime
from facematch.model_files import file_sha256, load_card, resolve_model_path
path = resolve_model_path(load_card("w600k_mbf"))
sha = file_sha256(path)
t1 = time.perf_counter()
variant = sys.argv[1]
if variant == "rewrite at every load (before)":
    model = runtime.make_batch_dynamic(path.read_bytes())
elif variant == "cached rewrite (now)":
    model = runtime.batch_dynamic_model(path, sha)
else:
    model = str(path)
sess = runtime.create_session(model, providers=["cpu"])
t2 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((8, 3, 112, 112)).astype(np.float32)
out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
print(repr((t2 - t1, float(out.sum()), "onnx" in sys.modules)))
"""

VARIANTS = ("rewrite at every load (before)", "cached rewrite (now)", "no rewrite (free dimensions only)")


def bench_load_path(runs: int) -> dict[str, dict[str, float]]:
    """Embedder session creation, fresh interpreter per run, the three ways of getting a dynamic batch."""
    subprocess.run(  # fill the cache
        [sys.executable, "-c", LOAD_VARIANT, VARIANTS[1]], check=True, capture_output=True, env=child_env()
    )
    times: dict[str, list[float]] = defaultdict(list)
    sums: dict[str, set[float]] = defaultdict(set)
    onnx_loaded: dict[str, bool] = {}
    for _ in range(runs):
        for v in VARIANTS:
            out = subprocess.run(
                [sys.executable, "-c", LOAD_VARIANT, v], check=True, capture_output=True, text=True, env=child_env()
            )
            seconds, total, loaded = eval(out.stdout.strip().splitlines()[-1])  # our own repr
            times[v].append(seconds)
            sums[v].add(round(total, 3))
            onnx_loaded[v] = loaded
    return {
        v: {
            "median_s": statistics.median(times[v]),
            "min_s": min(times[v]),
            "max_s": max(times[v]),
            "imports_onnx": onnx_loaded[v],
            "batch8_output_sum": sorted(sums[v])[0],
        }
        for v in VARIANTS
    }


def importtime_breakdown(runs: int, a: Path, b: Path) -> dict[str, object]:
    """Median self import time per top-level package in ``facematch verify A B`` (``-X importtime``)."""
    per_run: list[dict[str, float]] = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "facematch.cli", "verify", str(a), str(b)],
            capture_output=True,
            text=True,
            check=True,
            env=child_env(),
        )
        pkg: dict[str, float] = defaultdict(float)
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            parts = line.split("|")
            self_us, name = parts[0].replace("import time:", "").strip(), parts[2].strip()
            pkg[name.split(".", 1)[0]] += int(self_us) / 1000.0
        per_run.append(pkg)
    names = set().union(*per_run)
    med = {n: statistics.median(r.get(n, 0.0) for r in per_run) for n in names}
    top = sorted(med.items(), key=lambda kv: -kv[1])
    return {
        "runs": runs,
        "total_ms": statistics.median(sum(r.values()) for r in per_run),
        "top_ms": dict(top[:14]),
        "onnx_imported": any("onnx" in r for r in per_run),
        "ml_dtypes_imported": any("ml_dtypes" in r for r in per_run),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="cold runs per command")
    ap.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "wild")
    ap.add_argument("--pair", nargs=2, default=("obama.jpg", "obama2.jpg"), help="two photos in --images")
    ap.add_argument("--load-runs", type=int, default=7)
    ap.add_argument("--importtime-runs", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--baseline", default=None, help="another facematch entry point to time in the same turns (e.g. before)"
    )
    ap.add_argument(
        "--exe",
        default=None,
        help="the facematch entry point to time (default: this interpreter's; e.g. a regular, non-editable "
        "install built from this checkout, as users have)",
    )
    args = ap.parse_args()
    a, b = (args.images / p for p in args.pair)
    env = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "pair": [a.name, b.name],
        "baseline": args.baseline,
        "exe": entry_point(args.exe),
    }
    t0 = time.time()
    commands = bench_commands(args.runs, a, b, args.baseline, args.exe)
    load = bench_load_path(args.load_runs)
    imports = importtime_breakdown(args.importtime_runs, a, b)
    env["load_after"] = os.getloadavg()
    env["seconds"] = round(time.time() - t0, 1)
    result = {"env": env, "commands": commands, "load_path": load, "importtime": imports}

    print(
        f"python {env['python']}, {env['cpus']} CPUs, load average before {env['load_before']}, after "
        f"{env['load_after']}; pair {a.name} / {b.name}\n"
    )
    print("| command | runs | median s | min s | max s | IQR s | CPU s (median) | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in commands.items():
        print(
            f"| `{name}` | {s['n']} | {s['median_s']:.3f} | {s['min_s']:.3f} | {s['max_s']:.3f} | {s['iqr_s']:.3f} "
            f"| {s['cpu_median_s']:.3f} | {s['rss_mb']:.0f} |"
        )
    v = commands["facematch verify A B"]
    verdict = "met" if v["median_s"] <= TARGET_S else "missed"
    print(f"\ntarget: median wall <= {TARGET_S} s for `facematch verify`: **{verdict}** ({v['median_s']:.3f} s)\n")
    print("| embedder load (fresh interpreter) | median s | min s | max s | imports onnx | batch-8 output sum |")
    print("|---|---:|---:|---:|---|---:|")
    for name, s in load.items():
        print(
            f"| {name} | {s['median_s']:.3f} | {s['min_s']:.3f} | {s['max_s']:.3f} | "
            f"{'yes' if s['imports_onnx'] else 'no'} | {s['batch8_output_sum']} |"
        )
    print(
        f"\nimport time of `facematch verify` ({imports['runs']} runs, median): {imports['total_ms']:.0f} ms; "
        f"onnx imported: {'yes' if imports['onnx_imported'] else 'no'}"
    )
    print("| package | self ms |\n|---|---:|")
    for name, ms in imports["top_ms"].items():  # type: ignore[attr-defined]
        print(f"| {name} | {ms:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
