"""Does training several seeds in one program raise throughput? A measurement.

Times the training step of the full IMDB setting (20,000-word table, LSTM(128),
batch 32) for one seed alone and for 2 and 4 seeds under ``jax.vmap``, after
compiling, interleaved (each repeat times every seed count in turn, so that
they share whatever else loads the machine), and reports seconds per
epoch-run: the time of one epoch's 625 steps divided by the number of seeds
the program trains. Writes the numbers
with the machine's facts to ``--out`` (JSON).

Run:

    nice -n 19 python -m optax_lookahead_experiments.imdb.throughput \\
        --out results/imdb_throughput.json
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

from optax_lookahead_experiments import run_info
from optax_lookahead_experiments.imdb import model as imdb_model
from optax_lookahead_experiments.imdb import train as imdb_train
from optax_lookahead_experiments.imdb.optimizers import make_optimizer


def make_runner(optimizer: str, seeds: int, data):
    """A function ``n -> None`` running ``n`` training steps of ``seeds`` seeds."""
    model = imdb_model.SentimentLSTM(data.vocab_size)
    tx = make_optimizer(optimizer)
    vmapped = seeds > 1
    params = [
        imdb_model.init_params(model, jax.random.key(s), data.train_tokens.shape[1])
        for s in range(seeds)
    ]
    states = [tx.init(p) for p in params]
    if vmapped:
        params, state = imdb_train._stack(params), imdb_train._stack(states)
        keys = jax.random.split(jax.random.key(0), seeds)
    else:
        (params,), (state,), keys = params, states, jax.random.key(0)
    step = imdb_model.make_train_step(model, tx, vmapped)
    rng = np.random.default_rng(0)
    shape = (seeds, imdb_train.BATCH_SIZE) if vmapped else (imdb_train.BATCH_SIZE,)
    carry = [params, state]

    def run(n):
        for _ in range(n):
            batch = rng.integers(0, len(data.train_labels), shape)
            tokens, labels = data.train_tokens[batch], data.train_labels[batch]
            *carry[:], loss, _ = step(*carry, tokens, labels, keys)
            np.asarray(loss)

    return run


def measure(optimizer, seed_counts, data, steps: int, repeats: int) -> list[dict]:
    """Step times of each seed count, interleaved so that they share the load.

    Each repeat times ``steps`` steps of every seed count in turn; the
    result per seed count is the median over repeats of the mean step time.
    """
    runners, compile_seconds = {}, {}
    for seeds in seed_counts:
        runners[seeds] = make_runner(optimizer, seeds, data)
        start = time.perf_counter()
        runners[seeds](1)  # compiles
        compile_seconds[seeds] = time.perf_counter() - start
    means = {seeds: [] for seeds in seed_counts}
    for _ in range(repeats):
        for seeds, run in runners.items():
            start = time.perf_counter()
            run(steps)
            means[seeds].append((time.perf_counter() - start) / steps)
    steps_per_epoch = len(data.train_labels) // imdb_train.BATCH_SIZE
    rows = []
    for seeds in seed_counts:
        step_seconds = statistics.median(means[seeds])
        rows.append(
            {
                "optimizer": optimizer,
                "seeds": seeds,
                "step_seconds": step_seconds,
                "step_seconds_each_repeat": means[seeds],
                "compile_seconds": compile_seconds[seeds],
                "epoch_seconds": step_seconds * steps_per_epoch,
                "seconds_per_epoch_run": step_seconds * steps_per_epoch / seeds,
            }
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", nargs="+", default=["adam", "lazy"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    data = imdb_train.prepare()
    rows = []
    for optimizer in args.optimizers:
        for row in measure(optimizer, args.seeds, data, args.steps, args.repeats):
            rows.append(row)
            print(
                f"{optimizer:>18} {row['seeds']} seed(s):"
                f" {1e3 * row['step_seconds']:.1f} ms/step,"
                f" {row['seconds_per_epoch_run']:.1f} s per epoch-run"
                f" (compile {row['compile_seconds']:.1f} s)",
                flush=True,
            )
    jax.clear_caches()
    if args.out is not None:
        log = {
            "command": "python -m optax_lookahead_experiments.imdb.throughput "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "environment": run_info.environment(),
            "config": vars(args) | {"out": str(args.out)},
            "rows": rows,
        }
        args.out.write_text(json.dumps(log, indent=1) + "\n")


if __name__ == "__main__":
    main()
