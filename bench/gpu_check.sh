#!/usr/bin/env bash
# Issue 19's GPU goals in one device run (an H200: about 8 minutes), for a session that is
# lent a GPU machine. That machine has torch, transformers and ONNX Runtime but not all of
# artnote's dependencies, and cannot download: first, here,
#     bash bench/gpu_check.sh prepare        # wheels into .gpu-wheels/ (git-ignored)
# then one device run with carry [".gpu-wheels"]:
#     bash bench/gpu_check.sh
# It runs the CUDA tests of the decoding loops (cuda-graphs and growing give the same greedy
# text) and scan_bench on the LLaVA-1.5-7B shape, 256 images (8 full batches), 64 tokens,
# growing and cuda-graphs side by side, the naive loop timed on 8 of the images; results
# land in $OUT (or bench/). Checked on the CPU at tiny size with
#     SHAPE=tiny IMAGES=4 SAMPLE=2 TOKENS=3 LOOPS="growing static" bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = prepare ]; then
    # artnote's scan needs these beyond what that machine's image holds (Python 3.12 there).
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-wheels \
        sqlalchemy alembic mako greenlet typing-extensions
    exit 0
fi
out=${OUT:-bench}
if [ -d .gpu-wheels ]; then
    python3 -m pip install -q --no-index --no-deps .gpu-wheels/*.whl
    python3 -m pip install -q --no-deps --no-build-isolation -e .
fi
python3 -m pytest -q -p no:cacheprovider tests/test_decode_loop.py -k cuda 2>&1 | tail -5 \
    || echo "CUDA tests failed (above)"
# shellcheck disable=SC2086  # LOOPS is a list of words
python3 bench/scan_bench.py --shape "${SHAPE:-llava-1.5-7b}" --images "${IMAGES:-256}" \
    --tokens "${TOKENS:-64}" --naive-sample "${SAMPLE:-8}" \
    --decode-loop ${LOOPS:-growing cuda-graphs} --json "$out/results-gpu-check.json"
