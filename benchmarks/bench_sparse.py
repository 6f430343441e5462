"""Sparse lazy Adam against dense Adam: cost that follows the sampled rows.

Tables of 200,000 and 2,000,000 rows x 128 (float32), with 0.1%, 1% and 10% of
rows sampled per step. Two kinds of figures, each a ratio to dense
``optax.adam`` measured interleaved in the same repetition (median over
repetitions):

- optimizer step: the update and its application, jitted with params and state
  donated, given the gradient (dense variants get the table-size gradient,
  sparse ones the :class:`SparseRows`);
- whole training step: lookup, backward and update for a bag-of-embeddings
  model (``sum(table[ids]) @ w``). The dense path differentiates with respect
  to the table (a table-size gradient built by scatter-add); the sparse path
  differentiates with respect to the looked-up rows.

Variants: ``optax.adam`` (dense), ``lazy_mask(adam, freeze_state=True)``
(dense, same results as the sparse one), ``sparse_lazy(adam)``, and
``lookahead(sparse_lazy(adam))`` through ``update_and_apply``, jitted with
``jax.jit`` and, as ``lookahead(sparse_lazy(adam)) [lookahead_jit]``, with
``optax_lookahead.lookahead_jit`` (one program per lookahead phase, chosen on
the host; the call, host's choice included, is what is timed).

Each step samples other rows: the sparse variants and the whole training step
cycle through ``--id-buffers`` (20) id buffers drawn independently, as
training batches would be, so the rows a step gathers are mostly not in the
cache, and a lookahead sync interpolates every row its period touched (about
5 times a step's rows at 1%). ``--id-buffers 1`` gives every step the same
rows, as the first versions of this benchmark did (rows warm in the cache,
syncs of one step's rows). The dense optimizer-step variants get one
table-size gradient, since their cost does not depend on which rows it holds.
Each time is the mean over whole periods of 5 steps (so a lookahead variant's
sync is in it), as many as fill ``--min-sample-seconds``, at least two.
"bytes" is along the path of a non-sync and of a sync step through the
compiled step (for ``[lookahead_jit]``, each phase's own program, lowered
with the state's step count at 1 and at 4; see ``harness.phase_programs``),
counting in-place scatters and gathers by the rows they move
(benchmarks/hlo_bytes.py).

Time figures are measured with glibc's default malloc and with the tunables in
harness.py (``--malloc``).

Run from the repository root (the 2M-row tables one fraction per process, so
that each starts with a fresh heap on a 24 GiB machine, where the variants'
params and states hold about 14 GiB at 2M rows; results merge into the --out
file):
    python -m benchmarks.bench_sparse --rows 200000 --out benchmarks/results/sparse-cpu.json
    for f in 0.001 0.01 0.1; do python -m benchmarks.bench_sparse --rows 2000000 \
        --fractions $f --repetitions 3 --out benchmarks/results/sparse-cpu.json; done
On a GPU machine use ``--malloc default`` (benchmarks/gpu_all.sh).
"""

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import harness, hlo_bytes
from optax_lookahead import (
    gather_rows,
    lazy_mask,
    lookahead,
    sparse_lazy,
    sparse_rows,
    update_and_apply,
)

MODULE = "benchmarks.bench_sparse"
DIM, SYNC_PERIOD = 128, 5
# Distinct id buffers a run cycles through (--id-buffers): 20 x 1% covers
# most of the table, so the rows of consecutive steps differ, as in training.
ID_BUFFERS = 20


# Above this many rows the dense lazy_mask variant is left out: with the
# other variants alive it needs more than this 24 GiB machine has (its step
# keeps two table-size temporaries).
DENSE_LAZY_MAX_ROWS = 500_000


def variants(rows):
    adam = lambda: optax.adam(1e-3)
    dense_lazy = {
        "lazy_mask(adam, freeze_state) (dense)": (
            "dense",
            lambda: lazy_mask(adam(), freeze_state=True),
        )
    }
    return {
        "adam (dense)": ("dense", adam),
        **(dense_lazy if rows <= DENSE_LAZY_MAX_ROWS else {}),
        "sparse_lazy(adam)": ("sparse", lambda: sparse_lazy(adam())),
        "lookahead(sparse_lazy(adam))": (
            "sparse",
            lambda: lookahead(sparse_lazy(adam()), SYNC_PERIOD),
        ),
        "lookahead(sparse_lazy(adam))" + harness.LOOKAHEAD_JIT: (
            "sparse",
            lambda: lookahead(sparse_lazy(adam()), SYNC_PERIOD),
        ),
    }


def optimizer_step(tx):
    def step(params, state, grads):
        return update_and_apply(tx, params, state, grads)

    return step


def training_step(tx, sparse, rows):
    """Lookup, backward and update of a bag-of-embeddings regression."""

    def loss_of_embedded(embedded, kernel, target):
        return jnp.mean(jnp.square(embedded.sum(axis=1) @ kernel - target))

    def step(params, state, batch):
        ids, target = batch
        if sparse:
            looked_up = gather_rows(params["embedding"], ids)
            row_grads, kernel_grads = jax.grad(loss_of_embedded, argnums=(0, 1))(
                looked_up, params["kernel"], target
            )
            grads = {
                "embedding": sparse_rows(ids, row_grads, num_rows=rows),
                "kernel": kernel_grads,
            }
        else:
            grads = jax.grad(
                lambda p: loss_of_embedded(p["embedding"][ids], p["kernel"], target)
            )(params)
        return update_and_apply(tx, params, state, grads)

    return step


class Runner:
    def __init__(self, name, step, tx, params, batches, min_sample_seconds):
        self.step = harness.jit_for(name)(step, donate_argnums=(0, 1))
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        self.batches = batches
        self.steps_taken = 0
        # One whole period compiles every program the variant runs (for
        # lookahead_jit: the first update, a non-sync step and a sync); a
        # second one, warm, sizes the samples.
        self.seconds_per_step(SYNC_PERIOD)
        period_seconds = SYNC_PERIOD * self.seconds_per_step(SYNC_PERIOD)
        self.steps_per_sample = SYNC_PERIOD * max(
            2, math.ceil(min_sample_seconds / period_seconds)
        )
        self.bytes = {}
        programs = harness.phase_programs(
            self.step, self.params, self.state, batches[0], SYNC_PERIOD
        )
        for label, (compiled, path) in programs.items():
            known = path is not None
            self.bytes[label] = (
                hlo_bytes.path_bytes(compiled.as_text(), path) if known else None
            )

    def seconds_per_step(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            batch = self.batches[self.steps_taken % len(self.batches)]
            self.params, self.state = self.step(self.params, self.state, batch)
            self.steps_taken += 1
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - start) / steps

    def sample(self):
        return self.seconds_per_step(self.steps_per_sample)

    def release(self):
        del self.params, self.state


def measure(
    rows, fraction, repetitions, whole_step, only, min_sample_seconds, num_id_buffers
):
    rng = np.random.default_rng(0)
    count = max(1, int(rows * fraction))
    id_buffers = [
        jnp.asarray(rng.choice(rows, size=count, replace=False), jnp.int32)
        for _ in range(num_id_buffers)
    ]
    params = {
        "embedding": jax.random.normal(jax.random.key(0), (rows, DIM)) * 0.05,
        "kernel": jax.random.normal(jax.random.key(1), (DIM, 1)) * 0.05,
    }
    row_values = jax.random.normal(jax.random.key(2), (count, DIM))
    kernel_grad = jnp.ones((DIM, 1))
    chosen = variants(rows)
    if only:  # adam (dense), the base of every ratio, always runs
        chosen = {n: v for n, v in chosen.items() if n in only or n == "adam (dense)"}
    if whole_step:
        # Bags of 8 ids each, so the lookups cover the sampled rows.
        bags = [
            ids[: (count // 8) * 8].reshape(-1, 8) if count >= 8 else ids[None]
            for ids in id_buffers
        ]
        batches = [(b, jnp.ones((b.shape[0], 1))) for b in bags]
        batches_of = {"dense": batches, "sparse": batches}
    else:
        # One table-size gradient for the dense variants: a dense step costs
        # the same whichever rows it holds.
        dense = jnp.zeros((rows, DIM)).at[id_buffers[0]].set(row_values)
        batches_of = {
            "dense": [{"embedding": dense, "kernel": kernel_grad}],
            "sparse": [
                {
                    "embedding": sparse_rows(ids, row_values, num_rows=rows),
                    "kernel": kernel_grad,
                }
                for ids in id_buffers
            ],
        }
    runners = {}
    for name, (kind, make_tx) in chosen.items():
        tx = make_tx()
        if whole_step:
            step = training_step(tx, kind == "sparse", rows)
        else:
            step = optimizer_step(tx)
        runners[name] = Runner(
            name, step, tx, params, batches_of[kind], min_sample_seconds
        )
    del params  # each runner holds its own copy
    seconds = {name: [] for name in runners}
    for _ in range(repetitions):
        for name, runner in runners.items():
            seconds[name].append(runner.sample())
    base = "adam (dense)"
    result = {}
    for name, runner in runners.items():
        ratios = [s / b for s, b in zip(seconds[name], seconds[base], strict=True)]
        result[name] = {
            "time_ratio": statistics.median(ratios),
            "time_ratio_spread": [min(ratios), max(ratios)],
            "seconds": statistics.median(seconds[name]),
            "bytes_ratio": runner.bytes["non_sync"] / runners[base].bytes["non_sync"],
            "bytes_ratio_sync": None
            if runner.bytes["sync"] is None
            else runner.bytes["sync"] / runners[base].bytes["non_sync"],
            "program": "lookahead_jit"
            if harness.uses_lookahead_jit(name)
            else "jax.jit",
        }
        runner.release()
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000])
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[0.001, 0.01, 0.1]
    )
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument(
        "--variants",
        nargs="+",
        help="measure only these variants (and adam (dense)): all of them at"
        " 2,000,000 rows need more memory than 24 GiB",
    )
    parser.add_argument(
        "--min-sample-seconds",
        type=float,
        default=0.2,
        help="each timed sample runs whole periods until it lasts this long",
    )
    parser.add_argument(
        "--id-buffers",
        type=int,
        default=ID_BUFFERS,
        help="distinct id buffers the steps cycle through (1: every step the same rows)",
    )
    harness.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.repetitions < 1 or args.id_buffers < 1:
        parser.error("--repetitions and --id-buffers must be >= 1")
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error("fractions must be in (0, 1]")
    if any(rows < 1 for rows in args.rows) or args.min_sample_seconds < 0:
        parser.error("--rows must be >= 1 and --min-sample-seconds >= 0")
    unknown = set(args.variants or ()) - set(variants(1))
    if unknown:
        parser.error(
            f"unknown --variants {sorted(unknown)}; known: {list(variants(1))}"
        )
    return args


def main():
    args = parse_args()
    malloc = harness.settle_malloc(MODULE, args)
    results = []
    for rows in args.rows:
        for fraction in args.fractions:
            print(f"== {rows:,} rows, {fraction:.1%} sampled", flush=True)
            optimizer, whole = (
                measure(
                    rows,
                    fraction,
                    args.repetitions,
                    whole_step,
                    args.variants,
                    args.min_sample_seconds,
                    args.id_buffers,
                )
                for whole_step in (False, True)
            )
            results.append(
                {
                    "rows": rows,
                    "fraction": fraction,
                    "optimizer": optimizer,
                    "whole": whole,
                }
            )
    header = harness.environment(
        MODULE,
        malloc,
        repetitions=args.repetitions,
        min_sample_seconds=args.min_sample_seconds,
        id_buffers=args.id_buffers,
    )
    print(json.dumps(header, indent=1))
    runs = {malloc: {"header": header, "results": results}}
    if args.out:
        runs = harness.write_run(args.out, header, results, merge)["runs"]
    print(table(runs))
    harness.finish(args)


def merge(earlier, results):
    """Earlier results and new ones; new ones replace those of the same table
    size and fraction."""
    fresh = {(r["rows"], r["fraction"]) for r in results}
    kept = [r for r in earlier if (r["rows"], r["fraction"]) not in fresh]
    return sorted(kept + results, key=lambda r: (r["rows"], r["fraction"]))


def table(runs):
    """The markdown table of a results file's runs: time per malloc setting
    (default / tuned), bytes from the compiled program."""
    settings = [m for m in harness.MALLOC_ORDER if m in runs]
    by_config = {}  # (rows, fraction) -> {malloc: result}
    for malloc in settings:
        for result in runs[malloc]["results"]:
            key = (result["rows"], result["fraction"])
            by_config.setdefault(key, {})[malloc] = result
    lines = [
        "| table rows | sampled | variant | optimizer step, time (default / tuned"
        " malloc) | optimizer step (bytes non-sync / sync) | whole training step,"
        " time (default / tuned) |",
        "|---|---|---|---|---|---|",
    ]
    for (rows, fraction), measured in sorted(by_config.items()):
        names = list(
            dict.fromkeys(n for r in measured.values() for n in r["optimizer"])
        )
        for name in names:
            optimizer, whole = (
                _times(measured, part, name) for part in ("optimizer", "whole")
            )
            first = next(r for r in measured.values() if name in r["optimizer"])
            figure = first["optimizer"][name]
            sync = figure.get("bytes_ratio_sync")
            sync = "-" if sync is None else f"{sync:.3f}x"
            lines.append(
                f"| {rows:,} | {fraction:.1%} | `{name}` | {optimizer} |"
                f" {figure['bytes_ratio']:.3f}x / {sync} | {whole} |"
            )
    return "\n".join(lines)


def _times(measured, part, name):
    """``default / tuned`` time cells of one variant, ``-`` where not measured."""
    cells = []
    for malloc in harness.MALLOC_ORDER:
        figure = measured.get(malloc, {}).get(part, {}).get(name)
        cells.append(
            f"{figure['time_ratio']:.3f}x ({1e3 * figure['seconds']:.2f} ms)"
            if figure
            else "-"
        )
    return " / ".join(cells)


if __name__ == "__main__":
    main()
