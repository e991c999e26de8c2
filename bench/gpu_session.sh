#!/bin/bash
# Issue 18's GPU figures in one call to a lent GPU machine (the `device`
# tool: an H200 with Python 3.12, torch and transformers, but no Beam; at
# most 10 minutes a call and 15 of device time a session, start included).
#
#   bash bench/gpu_session.sh fetch   # here: Beam and what the image lacks,
#                                     # as cp312 wheels in bench/.gpu-wheels
#   # then, through the device tool, carrying bench/.gpu-wheels:
#   bash bench/gpu_session.sh run     # there: installs them, runs the bench
#
# `run` measures what the targets need first (the plain-loop baseline on
# 640 prompts, ~40 s; default options, with a schema; hand-set batches),
# each row printed as it ends, under a time limit that leaves the call time
# to return what it has:
# $OUT/gpu_throughput.md (or bench/gpu_throughput.md without $OUT).
# BENCH_ARGS adds options (`--small --device cpu`: does it run?).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/.gpu-wheels

case "${1:-}" in
fetch)
  # The list shared/DESIGN.md found the GPU image lacking (~40 MB).
  mkdir -p "$WHEELS"
  python3 -m pip download -q --only-binary :all: --no-deps \
    --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64 \
    --platform manylinux_2_34_x86_64 -d "$WHEELS" \
    apache-beam==2.77.0 cryptography fastavro fasteners httplib2 jsonpickle \
    'objsize<0.8' pymongo dnspython proto-plus pytz zstandard 'beartype<0.23' \
    docstring-parser jsonschema jsonschema-specifications referencing rpds-py \
    json_repair fastjsonschema llguidance==1.9.1 cffi pycparser
  du -sh "$WHEELS"
  ;;
run)
  out="${OUT:-bench}"
  deps=/tmp/beam-llm-gpu-deps
  python3 -m pip install -q --no-deps --target "$deps" "$WHEELS"/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    | tee "$out/gpu_throughput.md"
  # 4,096 prompts for the pipeline (model load and Beam's start amortized),
  # 640 for the baselines, whose rate hardly depends on the count.
  PYTHONPATH="$deps:$PWD" timeout "${LIMIT_SECS:-500}" python3 \
    bench/gpu_throughput.py --prompts 4096 --baseline_prompts 640 \
    --batches 256 512 1024 --only \
    'plain generate loop, batch 64' 'GenerateText, default options' \
    'GenerateText, batch 256' 'GenerateText, batch 512' \
    'GenerateText, batch 1024' 'same loop, sorted' 'transformers' \
    ${BENCH_ARGS:-} 2>"$out/gpu_throughput.log" | tee -a "$out/gpu_throughput.md"
  ;;
*)
  echo "usage: bash bench/gpu_session.sh fetch|run" >&2
  exit 2
  ;;
esac
