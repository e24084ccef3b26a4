"""Load benchmark of the REST server on loopback: requests/s and p50/p95/p99 latency.

Starts a real server (``python -m facematch.server``) on 127.0.0.1 with a small gallery
enrolled from ../shared/data/wild, then drives POST /verify and POST /identify at
concurrency 1, 8 and 32, each cell bounded by ``--requests`` and ``--seconds``. A second
server with micro-batching off (batch size 1) runs /verify at the highest concurrency so
the batching gain is measured side by side. Writes benchmarks/server_results.md.

``--servers NAME=PYTHON,...`` runs the same cells against several installs side by side in one
run (each started with its own interpreter, e.g. the virtual environment of an older checkout),
taking turns cell by cell, to measure a change before/after on the same machine state.
``--gallery-templates N`` first fills each server's gallery (with that server's own install)
with N random unit templates of the default model, 4 per identity, so that /identify searches
a gallery of realistic size.

    python benchmarks/bench_server.py [--seconds 15] [--requests 400] [--gallery-templates 20000] \\
        [--servers before=/old/.venv/bin/python,after=python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
WILD = Path(os.environ.get("FACEMATCH_SHARED", REPO.parent / "shared")) / "data" / "wild"
KEY = "bench-key-0123456789"
PAIRS = [
    ("obama.jpg", "obama2.jpg"),
    ("obama.jpg", "biden.jpg"),
    ("kit_harington1.jpg", "kit_harington2.jpg"),
    ("rose_leslie1.jpg", "kit_harington1.jpg"),
    ("biden.jpg", "biden2.jpg"),
]
ENROL = {
    "obama": "obama.jpg",
    "biden": "biden.jpg",
    "kit_harington": "kit_harington1.jpg",
    "rose_leslie": "rose_leslie1.jpg",
    "alex_lacamoire": "alex_lacamoire.png",
}
PROBES = ["obama3.jpg", "obama4.jpg", "biden2.jpg", "kit_harington2.jpg", "rose_leslie2.jpg", "alex_lacamoire2.jpg"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PREFILL = """
import sys
import numpy as np
from facematch.gallery import Gallery
path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
with Gallery(path, synchronous="NORMAL") as g:
    for i in range(0, n, 4):
        x = rng.standard_normal((min(4, n - i), 512)).astype(np.float32)
        g.enroll_embeddings(f"bulk{i // 4:07d}", x, "w600k_mbf")
"""


def start_server(
    tmp: Path, python: str = sys.executable, prefill: int = 0, **settings: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEMATCH_")}
    env["FACEMATCH_API_KEYS"] = json.dumps([{"name": "bench", "key": KEY, "scopes": ["admin"]}])
    env.update({f"FACEMATCH_{k.upper()}": v for k, v in settings.items()})
    if prefill:
        subprocess.run(
            [python, "-c", PREFILL, str(tmp / f"bench-{port}.fmg"), str(prefill)], env=env, check=True, cwd=tmp
        )
    cmd = [
        python,
        "-m",
        "facematch.server",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--gallery",
        str(tmp / f"bench-{port}.fmg"),
    ]
    # cwd: not the repository, whose facematch/ would shadow the install of ``python`` (python -m
    # puts the working directory first on sys.path): each server must run its own install
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server not ready")


async def run_cell(
    url: str, endpoint: str, concurrency: int, max_requests: int, seconds: float, images: dict[str, bytes]
) -> dict[str, float]:
    lat: list[float] = []
    status: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120, limits=limits) as c:

        async def worker(i: int) -> None:
            nonlocal issued
            j = i
            while issued < max_requests and time.monotonic() < deadline:
                issued += 1
                if endpoint == "/verify":
                    a, b = PAIRS[j % len(PAIRS)]
                    files = {"image1": (a, images[a]), "image2": (b, images[b])}
                else:
                    p = PROBES[j % len(PROBES)]
                    files = {"image": (p, images[p])}
                j += 1
                t = time.perf_counter()
                r = await c.post(endpoint, files=files)
                lat.append(time.perf_counter() - t)
                status[r.status_code] = status.get(r.status_code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.asarray(lat) * 1000
    return {
        "requests": float(len(lat)),
        "ok": float(status.get(200, 0)),
        "rps": len(lat) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort

    return (
        f"{cpu}, {os.cpu_count()} logical cores, no GPU; Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"
    )


def enrol(url: str, images: dict[str, bytes]) -> None:
    for name, img in ENROL.items():
        r = httpx.post(
            f"{url}/gallery/identities",
            headers={"X-API-Key": KEY},
            data={"identity_id": name},
            files={"images": (img, images[img])},
            timeout=60,
        )
        r.raise_for_status()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="time bound per cell")
    ap.add_argument("--requests", type=int, default=400, help="request bound per cell")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument(
        "--servers",
        default=f"facematch={sys.executable}",
        help="NAME=PYTHON[,NAME=PYTHON...]: installs to measure side by side (default: this interpreter)",
    )
    ap.add_argument("--no-unbatched", action="store_true", help="skip the batch-size-1 comparison")
    ap.add_argument("--gallery-templates", type=int, default=0, help="fill the gallery with N random templates first")
    ap.add_argument("--endpoints", default="/verify,/identify", help="endpoints to measure, comma-separated")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "server_results.md")
    args = ap.parse_args()
    if not WILD.is_dir():
        raise SystemExit(f"{WILD} is absent (the shared data set lives beside the repository)")
    images = {p.name: p.read_bytes() for p in WILD.iterdir() if p.suffix in (".jpg", ".png")}
    levels = [int(x) for x in args.concurrency.split(",")]
    servers = [tuple(x.split("=", 1)) for x in args.servers.split(",")]
    rows: list[tuple[str, str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        try:
            for name, python in servers:
                proc, url = start_server(Path(tmp), python, prefill=args.gallery_templates)
                running.append((name, proc, url))
                enrol(url, images)
                asyncio.run(run_cell(url, "/verify", 4, 20, 5, images))  # warm-up
            for endpoint in args.endpoints.split(","):
                for conc in levels:
                    for name, _, url in running:  # taking turns: the same machine state for each install
                        res = asyncio.run(run_cell(url, endpoint, conc, args.requests, args.seconds, images))
                        label = f"{name}: batched (max 32, 2 ms)" if len(running) > 1 else "batched (max 32, 2 ms)"
                        rows.append((label, endpoint, conc, res))
                        print(label, endpoint, conc, {k: round(v, 1) for k, v in res.items()}, flush=True)
        finally:
            for _, proc, _ in running:
                proc.terminate()
                proc.wait(30)
        if not args.no_unbatched:
            proc, url = start_server(Path(tmp), servers[-1][1], batch_max_size="1", batch_max_wait_ms="0")
            try:
                asyncio.run(run_cell(url, "/verify", 4, 20, 5, images))
                res = asyncio.run(run_cell(url, "/verify", max(levels), args.requests, args.seconds, images))
                rows.append(("unbatched (max 1)", "/verify", max(levels), res))
                print("unbatched /verify", max(levels), {k: round(v, 1) for k, v in res.items()}, flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    write(args.out, rows, args)


def _names(servers: str) -> str:
    return ",".join(f"{x.split('=', 1)[0]}=..." for x in servers.split(","))


def write(out: Path, rows: list[tuple[str, str, int, dict[str, float]]], args: argparse.Namespace) -> None:
    lines = [
        "# REST server load benchmark",
        "",
        f"Machine: {machine()}. The cores are shared with other jobs running at the same time, so",
        "absolute numbers are noisy; the batched/unbatched rows were measured back to back in one run.",
        "",
        f"Command: `python benchmarks/bench_server.py --seconds {args.seconds:g} --requests {args.requests}"
        + (f" --gallery-templates {args.gallery_templates}" if args.gallery_templates else "")
        + (f" --endpoints {args.endpoints}" if args.endpoints != "/verify,/identify" else "")
        + (f" --servers {_names(args.servers)}`." if "," in args.servers else "`."),
        "One uvicorn worker on 127.0.0.1, httpx async clients on the same machine (they share the CPU).",
        "Images: real photos from ../shared/data/wild (JPEG/PNG, 0.1-0.6 MB, up to 1080p) as multipart uploads;",
        "/verify decodes, detects, aligns and embeds two images per request; /identify one image plus a",
        "search of a gallery of 5 identities"
        + (f" and {args.gallery_templates:,} random templates" if args.gallery_templates else "")
        + ". Latency is client-side, end to end.",
        "",
        "| server | endpoint | concurrency | requests | ok | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server, endpoint, conc, r in rows:
        lines.append(
            f"| {server} | `{endpoint}` | {conc} | {r['requests']:.0f} | {r['ok']:.0f} | {r['rps']:.1f} | "
            f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} |"
        )
    batched = [r for s, e, c, r in rows if "batched (max 32" in s and e == "/verify" and c == rows[-1][2]]
    if batched and rows[-1][0].startswith("unbatched"):
        ratio = batched[-1]["rps"] / rows[-1][3]["rps"]
        lines += [
            "",
            f"Micro-batching gain on `/verify` at concurrency {rows[-1][2]}: {ratio:.2f}x the "
            "throughput of the same server with batch size 1.",
        ]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
