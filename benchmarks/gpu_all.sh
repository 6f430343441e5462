#!/usr/bin/env bash
# Every GPU benchmark in one call of under 8 minutes, writing the JSON that
# benchmarks/write_report.py reads: gpu-<card>.json (bench_step: every
# workload, the IMDB-size model's whole training step included) and
# sparse-gpu-<card>.json (bench_sparse: 200,000 and 2,000,000 rows).
#
# Run from anywhere on a GPU machine, with a Python that has jax (CUDA),
# optax and numpy; the package is imported from this checkout, no install:
#     benchmarks/gpu_all.sh [OUT_DIR]
# OUT_DIR defaults to $OUT (the device tool's folder that comes back), else
# benchmarks/results. Then, here: copy the two files to benchmarks/results/
# and run `python -m benchmarks.write_report`.
#
# Host malloc does not move GPU step times, so GPU runs use --malloc default
# (what users get). Stages run in order of importance, one process each, and
# each writes its results when it finishes (bench_step's workloads merge into
# one file), so a stage cut short loses only itself. Each stage runs under its
# own cap and under what is left of an overall deadline (BUDGET_S, 450 s by
# default). Estimates on an H100/H200 (the headers' wall_seconds record the
# real ones; compiling dominates): dense 25 s, sparse 200,000 rows 40 s, IMDB
# model 150 s (15 variants, 25 programs: lookahead_jit compiles three per
# variant; 5 x 200 steps of ~3 ms each), embedding tables 35 s, sparse
# 2,000,000 rows 45 s: about 300 s in all, with room under the caps.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-benchmarks/results}}
BUDGET_S=${BUDGET_S:-450}
deadline=$((SECONDS + BUDGET_S))
mkdir -p "$OUT_DIR"

name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
case "$name" in
*H200*) card=h200 ;;
*H100*) card=h100 ;;
*A100*) card=a100 ;;
*) card=$(echo "${name:-gpu}" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-') ;;
esac
echo "GPU: ${name:-unknown} -> $OUT_DIR/gpu-$card.json, $OUT_DIR/sparse-gpu-$card.json"
"$PYTHON" -c 'import jax; print("jax", jax.__version__, jax.devices())' || exit 1

status=0
stage() { # stage NAME CAP_S COMMAND...: runs COMMAND for at most CAP_S s
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "== $1: skipped, $left s left of $BUDGET_S" >&2
    status=1
    return
  fi
  local limit=$(($2 < left ? $2 : left))
  echo "== $1 (at most $limit s)"
  local start=$SECONDS
  timeout "$limit" "${@:3}" || {
    echo "== $1 failed or ran out of time (exit $?)" >&2
    status=1
  }
  echo "== $1 took $((SECONDS - start)) s"
}

step=("$PYTHON" -m benchmarks.bench_step --malloc default --periods 20
  --repetitions 5 --out "$OUT_DIR/gpu-$card.json")
# Samples of 0.1 s: hundreds of steps on a GPU, and the stages stay in their caps.
sparse=("$PYTHON" -m benchmarks.bench_sparse --malloc default --min-sample-seconds 0.1
  --out "$OUT_DIR/sparse-gpu-$card.json")
stage "step cost, dense" 90 "${step[@]}" --workloads dense
stage "sparse, 200,000 rows" 90 "${sparse[@]}" --rows 200000 --repetitions 5
stage "step cost, IMDB model" 200 "${step[@]}" --workloads model
stage "step cost, embedding tables" 80 "${step[@]}" \
  --workloads embedding_1pct embedding_all
stage "sparse, 2,000,000 rows" 100 "${sparse[@]}" --rows 2000000 --repetitions 3
exit $status
