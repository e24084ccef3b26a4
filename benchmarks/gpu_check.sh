#!/usr/bin/env bash
# The GPU check in one command (< 8 minutes on a GPU machine):
#
#   bash benchmarks/gpu_check.sh            # on the GPU torch sees (falls back to the CPU variant)
#   bash benchmarks/gpu_check.sh cpu        # the same code at smaller sizes on CPU torch (proves the script)
#
# Needs: this checkout installed with its test data beside it (../shared/data), torch (a CUDA build on
# the GPU machine), onnxruntime and faiss. Measures the PyTorch embedder (cosine vs ONNX, faces/s at
# batch 1/32/256/1024, fp16 vs fp32, eager vs CUDA graphs), the detector's CPU cost, and torch flat search
# p50 at 1M and 10M templates; writes benchmarks/gpu_results.md (+ .json) and exits non-zero when a
# cosine or recall check misses its bar. Optional GPU runtimes are reported as they are found.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE="${1:-auto}"
LIMIT="${GPU_CHECK_TIMEOUT:-470}"   # seconds: the whole check stays under 8 minutes
OUT="${GPU_CHECK_OUT:-benchmarks/gpu_results.md}"
if [ "$DEVICE" = "cpu" ] && [ -z "${GPU_CHECK_OUT:-}" ]; then OUT=benchmarks/gpu_results_cpu.md; fi

echo "== machine"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader || true
else
  echo "no nvidia-smi"
fi
"$PY" - <<'PYEOF'
import importlib.util
for name in ("torch", "onnxruntime", "faiss", "tensorrt"):
    spec = importlib.util.find_spec(name)
    if spec is None:
        print(f"{name}: not installed")
        continue
    mod = __import__(name)
    extra = ""
    if name == "torch":
        extra = f" cuda={mod.version.cuda} available={mod.cuda.is_available()}"
    if name == "onnxruntime":
        extra = f" providers={mod.get_available_providers()}"
    print(f"{name}: {getattr(mod, '__version__', '?')}{extra}")
PYEOF

echo "== FAISS-GPU probe and ONNX Runtime providers (what facematch would really run on)"
"$PY" - <<'PYEOF'
from facematch.gallery.gpu_probe import compiled_architectures, faiss_gpu_probe
print("faiss GPU code:", compiled_architectures().describe())
print("probe:", faiss_gpu_probe().reason)
PYEOF
"$PY" -m facematch.cli models check w600k_mbf scrfd_500m_bnkps || echo "models check failed (see above)"

gpu_tests=0
echo "== pytest -m gpu (the GPU paths against their CPU oracles; each skips with its reason)"
"$PY" -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_gpu_real.py || gpu_tests=$?

echo "== bench_gpu.py --device $DEVICE (limit ${LIMIT}s)"
timeout "$LIMIT" "$PY" benchmarks/bench_gpu.py --device "$DEVICE" --out "$OUT"
echo "== wrote $OUT"
if [ "$gpu_tests" != 0 ]; then echo "GPU tests failed (exit $gpu_tests, see above)"; exit "$gpu_tests"; fi
