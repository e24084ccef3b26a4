"""The ``gpu`` extra and the GPU image agree on one CUDA major (no GPU needed: wheel metadata only).

``pip install --dry-run --report`` resolves the extra against the registry (the real wheels'
metadata, not a guess); every CUDA library it pulls, and every CUDA requirement a resolved
package declares, must carry the same major, and the Dockerfile's GPU base image that major.
Skipped, with the reason, when the registry cannot be reached.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
_SUFFIX = re.compile(r"^nvidia-[a-z0-9-]+?-cu(\d+)$")
_UNSUFFIXED = re.compile(r"^nvidia-cuda-(runtime|nvrtc)$")  # CUDA 13 wheels dropped the -cuNN suffix
_REQ = re.compile(r"^(nvidia-[a-z0-9-]+?)(?:-cu(\d+))?\s*(?:[~=<>!]=?\s*(\d+))?")


def gpu_extra() -> list[str]:
    return list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"])


def cuda_majors(report: dict) -> dict[int, list[str]]:  # type: ignore[type-arg]
    """CUDA major → what says so, over the resolved packages and the CUDA requirements they declare."""
    found: dict[int, list[str]] = {}
    for item in report["install"]:
        meta = item["metadata"]
        name, version = meta["name"].lower().replace("_", "-"), meta["version"]
        m = _SUFFIX.match(name)
        if m:
            found.setdefault(int(m.group(1)), []).append(f"{name}=={version}")
        elif _UNSUFFIXED.match(name):
            found.setdefault(int(version.split(".")[0]), []).append(f"{name}=={version}")
        for req in meta.get("requires_dist") or []:
            r = _REQ.match(req.lower().replace("_", "-"))
            if r is None or not r.group(1).startswith(("nvidia-cuda-", "nvidia-cudnn", "nvidia-cublas")):
                continue
            major = r.group(2) or (r.group(3) if _UNSUFFIXED.match(r.group(1)) else None)
            if major is not None:
                found.setdefault(int(major), []).append(f"{name} requires {req}")
    return found


def dockerfile_cuda_major() -> int:
    m = re.search(
        r"^FROM nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-\S+ AS base-gpu$", (REPO / "Dockerfile").read_text(), re.M
    )
    assert m, "the GPU image must start from an nvidia/cuda cuDNN runtime image"
    return int(m.group(1))


def test_the_extra_is_bounded_to_cuda_12_builds() -> None:
    reqs = {re.split(r"[\[<>=~ ]", r, maxsplit=1)[0]: r for r in gpu_extra()}
    assert set(reqs) == {"onnxruntime-gpu", "faiss-gpu"}
    # onnxruntime-gpu 1.27+ are CUDA 13 builds; [cuda,cudnn] brings the libraries it links as wheels
    assert "[cuda,cudnn]" in reqs["onnxruntime-gpu"] and "<1.27" in reqs["onnxruntime-gpu"]
    assert ">=1.21" in reqs["onnxruntime-gpu"]  # onnxruntime.preload_dlls (runtime.preload_cuda_libraries)
    # faiss-gpu-cu12 <= 1.14 has sm_70/sm_80 code only (aborts on Hopper); faiss-gpu 1.15 has sm_90 + PTX
    assert ">=1.15" in reqs["faiss-gpu"] and "<1.16" in reqs["faiss-gpu"]
    assert dockerfile_cuda_major() == 12
    docker = (REPO / "Dockerfile").read_text()
    assert '"tensorrt-cu12>=10,<11"' in docker  # onnxruntime-gpu 1.26's TensorRT provider links libnvinfer.so.10


def test_classifier_tells_the_majors_apart() -> None:
    report = {
        "install": [
            {"metadata": {"name": "onnxruntime-gpu", "version": "1.31.1",
                          "requires_dist": ['nvidia-cuda-runtime~=13.0; extra == "cuda"', "numpy>=1.21.6"]}},
            {"metadata": {"name": "nvidia-cuda-runtime", "version": "13.0.96"}},
            {"metadata": {"name": "faiss-gpu", "version": "1.15.1",
                          "requires_dist": ["nvidia-cuda-runtime-cu12<13,>=12.6"]}},
            {"metadata": {"name": "nvidia_cublas_cu12", "version": "12.9.3.13"}},
        ]
    }  # fmt: skip
    majors = cuda_majors(report)
    assert set(majors) == {12, 13}
    assert "nvidia-cuda-runtime==13.0.96" in majors[13] and "nvidia-cublas-cu12==12.9.3.13" in majors[12]


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("resolve") / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--disable-pip-version-check", "--report", str(out), *gpu_extra()]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("the package registry did not answer within 10 minutes")
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        if re.search(r"(?i)(connection|network|resolve host|name or service|timed out|temporary failure)", text):
            pytest.skip(f"the package registry is unreachable: {text.strip().splitlines()[-1][:200]}")
        pytest.fail(f"the gpu extra does not resolve:\n{text[-2000:]}")
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.mark.slow  # resolves against the registry: ~30 s
def test_the_gpu_extra_resolves_to_one_cuda_major(resolved: dict) -> None:  # type: ignore[type-arg]
    names = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in resolved["install"]}
    assert names["onnxruntime-gpu"].startswith("1.26.") and names["faiss-gpu"].startswith("1.15.")
    majors = cuda_majors(resolved)
    assert set(majors) == {12}, f"more than one CUDA major in the gpu extra: {majors}"
    assert any(n.startswith("nvidia-cudnn-cu12") for n in names), "cuDNN 9 comes as a wheel ([cudnn])"
    assert dockerfile_cuda_major() in majors
