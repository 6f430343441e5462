"""Step cost of lookahead and lazy_mask against optax.adam, as ratios.

Every variant is a jitted step that donates params and optimizer state:
``updates, state = tx.update(grads, state, params); params += updates`` (or
the fused ``update_and_apply``). Variants are measured interleaved, in one
process, over several repetitions; each figure is a ratio to ``optax.adam``
measured in the same repetition, and the table shows the median over
repetitions. Three workloads: ~16.8M dense float32 params; an embedding table
of 200,000 x 128 (1% and 100% of rows sampled); and the seed's IMDB model
(Embed -> LSTM -> Dense) whole training step, forward and backward included.

Time figures (ratios):
- non-sync: median time of a blocked step that is not a sync;
- sync: median time of a blocked sync step;
- mean: an unblocked run of whole periods (k=5 steps), divided by its steps.
Compiled-program figures (machine independent, from XLA's own analysis):
- bytes: bytes accessed along the non-sync and the sync path of the compiled
  step. XLA's ``cost_analysis()`` reports a ``lax.cond`` as its most expensive
  branch, so hlo_bytes.py sums XLA's per-instruction figure (operands plus
  result) along each path of the optimized HLO; on programs without a cond it
  equals ``cost_analysis()['bytes accessed']`` (checked in the JSON output);
- temp: ``memory_analysis().temp_size_in_bytes``;
- copies: ``copy`` instructions of a param-size shape along each path;
- state: persistent optimizer-state bytes, in param-copies beyond adam's.

Run (CPU figures in BENCHMARKS.md):
    python benchmarks/bench_step.py --out benchmarks/results/cpu.json
Set ``--quick`` for a smoke run. On CPU the script re-executes itself with
glibc malloc tunables that stop large temporaries from being mapped and
unmapped every step (DESIGN.md section 3), and says so.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_env  # noqa: E402

cpu_env.reexec_with_malloc_tunables()

import hlo_bytes  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import results_file  # noqa: E402

from optax_lookahead import (  # noqa: E402
    _lookahead,
    lazy_mask,
    lookahead,
    update_and_apply,  # noqa: E402
)

SYNC_PERIOD = 5


# ----------------------------------------------------------------------------
# Workloads: params, one batch of gradients (or data), and the step kinds.


def dense_params(quick):
    side = 512 if quick else 2048
    keys = jax.random.split(jax.random.key(0), 4)
    return {f"w{i}": jax.random.normal(k, (side, side)) for i, k in enumerate(keys)}


def embedding_params(quick, rows=200_000, dim=128):
    rows = rows // 20 if quick else rows
    table = jax.random.normal(jax.random.key(1), (rows, dim))
    return {"embedding": table}


def sampled_grads(params, fraction, seed=0):
    table = params["embedding"]
    rows = table.shape[0]
    count = max(1, int(rows * fraction))
    ids = np.random.default_rng(seed).choice(rows, size=count, replace=False)
    values = jax.random.normal(jax.random.key(seed), (count, table.shape[1]))
    return {"embedding": jnp.zeros_like(table).at[ids].set(values)}


def optimizer_variants(names):
    adam = lambda: optax.adam(1e-3)
    table = {
        "adam": ("plain", adam),
        "optax.lookahead(adam)": (
            "optax_lookahead_pair",
            lambda: optax.lookahead(adam(), SYNC_PERIOD, 0.5),
        ),
        "lookahead(adam)": ("plain", lambda: lookahead(adam(), SYNC_PERIOD)),
        "update_and_apply(lookahead(adam))": (
            "fused",
            lambda: lookahead(adam(), SYNC_PERIOD),
        ),
        # The two ways to stage out the sync, forced (the library picks one
        # per platform): see FORCE_SYNC_STRATEGY in optax_lookahead/_lookahead.py.
        "lookahead(adam) [branch]": ("plain/branch", lambda: lookahead(adam())),
        "lookahead(adam) [select]": ("plain/select", lambda: lookahead(adam())),
        "update_and_apply(lookahead(adam)) [branch]": (
            "fused/branch",
            lambda: lookahead(adam()),
        ),
        "update_and_apply(lookahead(adam)) [select]": (
            "fused/select",
            lambda: lookahead(adam()),
        ),
        "lazy_mask(adam)": ("plain", lambda: lazy_mask(adam())),
        "lazy_mask(adam, freeze_state)": (
            "plain",
            lambda: lazy_mask(adam(), freeze_state=True),
        ),
        "lookahead(lazy_mask(adam))": (
            "plain",
            lambda: lookahead(lazy_mask(adam()), SYNC_PERIOD),
        ),
        "update_and_apply(lookahead(lazy_mask(adam)))": (
            "fused",
            lambda: lookahead(lazy_mask(adam()), SYNC_PERIOD),
        ),
    }
    return {name: table[name] for name in names}


def make_step(kind, tx):
    """A step (params, state, batch) -> (params, state), given the grads."""
    if kind == "fused":
        return lambda params, state, grads: update_and_apply(tx, params, state, grads)
    if kind == "optax_lookahead_pair":

        def pair_step(pair, state, grads):
            updates, state = tx.update(grads, state, pair)
            return optax.apply_updates(pair, updates), state

        return pair_step

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def initial(kind, tx, params):
    params = jax.tree.map(jnp.copy, params)
    if kind == "optax_lookahead_pair":
        pair = optax.LookaheadParams(fast=params, slow=jax.tree.map(jnp.copy, params))
        return pair, tx.init(pair)
    return params, tx.init(params)


# ----------------------------------------------------------------------------
# The seed's IMDB model, for a whole training step.


def lstm_model_params(quick):
    vocab, dim = (2000 if quick else 20_000), 128
    keys = jax.random.split(jax.random.key(2), 4)
    return {
        "embedding": jax.random.uniform(
            keys[0], (vocab, dim), minval=-0.05, maxval=0.05
        ),
        "lstm": {
            "input": jax.random.normal(keys[1], (dim, 4 * dim)) / np.sqrt(dim),
            "recurrent": jax.random.normal(keys[2], (dim, 4 * dim)) / np.sqrt(dim),
            "bias": jnp.zeros(4 * dim),
        },
        "dense": {"kernel": jax.random.normal(keys[3], (dim, 1)) / np.sqrt(dim)},
    }


def lstm_loss(params, words, labels):
    embedded = params["embedding"][words]  # (batch, time, dim)
    dim = embedded.shape[-1]

    def cell(carry, x):
        h, c = carry
        gates = x @ params["lstm"]["input"] + h @ params["lstm"]["recurrent"]
        gates = gates + params["lstm"]["bias"]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((embedded.shape[0], dim))
    (h, _), _ = jax.lax.scan(cell, (zeros, zeros), jnp.swapaxes(embedded, 0, 1))
    logits = (h @ params["dense"]["kernel"])[:, 0]
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def make_model_step(kind, tx):
    inner = make_step(kind, tx)

    def step(params, state, batch):
        words, labels = batch
        fast = params.fast if kind == "optax_lookahead_pair" else params
        grads = jax.grad(lstm_loss)(fast, words, labels)
        return inner(params, state, grads)

    return step


# ----------------------------------------------------------------------------
# Measuring.


def block(tree):
    for leaf in jax.tree.leaves(tree):
        leaf.block_until_ready()


def param_shapes(params):
    """HLO spellings of the params' shapes, e.g. ``f32[2048,2048]``."""
    names = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
    return {
        f"{names.get(x.dtype.name, x.dtype.name)}[{','.join(map(str, x.shape))}]"
        for x in jax.tree.leaves(params)
    }


def compiled_figures(step, params, state, batch, kind):
    """Bytes and param-size copies along the non-sync and the sync path of the
    real compiled step (see hlo_bytes.py), XLA's own bytes figure (which costs
    a conditional as its dearest branch) and the temp allocation size."""
    compiled = (
        jax.jit(step, donate_argnums=(0, 1)).lower(params, state, batch).compile()
    )
    text = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    shapes = param_shapes(params.fast if kind == "optax_lookahead_pair" else params)
    figures = {
        "xla_bytes": float(cost.get("bytes accessed", float("nan"))),
        "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
    }
    for label, branch in (("non_sync", 0), ("sync", 1)):
        figures[label] = {
            "bytes": hlo_bytes.path_bytes(text, branch),
            "param_copies": hlo_bytes.path_copies(text, branch, shapes),
        }
    return figures


def state_bytes(state):
    return sum(x.nbytes for x in jax.tree.leaves(state))


class Runner:
    """One compiled, donated step of one variant, with its live buffers."""

    def __init__(self, kind, tx, params, batch, model_step):
        kind, _, strategy = kind.partition("/")
        # Tracing happens here, in __init__, so the forced strategy only needs
        # to hold while it runs.
        _lookahead.FORCE_SYNC_STRATEGY = strategy or None
        try:
            self._build(kind, tx, params, batch, model_step)
        finally:
            _lookahead.FORCE_SYNC_STRATEGY = None

    def _build(self, kind, tx, params, batch, model_step):
        self.kind = kind
        step = (make_model_step if model_step else make_step)(kind, tx)
        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.params, self.state = initial(kind, tx, params)
        self.batch = batch
        self.compiled = compiled_figures(step, self.params, self.state, batch, kind)
        self.state_bytes = state_bytes(self.state)
        if kind == "optax_lookahead_pair":  # its slow copy sits in the params
            self.state_bytes += state_bytes(self.params.slow)
        self.params, self.state = self.step(self.params, self.state, batch)  # compile
        block(self.params)
        self.phase = 1  # steps taken, modulo the period

    def timed_steps(self, steps, blocked):
        """Returns per-step times (blocked) or the total time (unblocked)."""
        times = []
        start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            self.params, self.state = self.step(self.params, self.state, self.batch)
            if blocked:
                block((self.params, self.state))
                times.append((self.phase, time.perf_counter() - t0))
            self.phase = (self.phase + 1) % SYNC_PERIOD
        block((self.params, self.state))
        return times if blocked else time.perf_counter() - start

    def align(self):
        """Steps until the next step is the first of a period."""
        while self.phase:
            self.timed_steps(1, blocked=True)


def measure_workload(name, params, batch, variants, repetitions, periods, model_step):
    print(f"\n== {name}", flush=True)
    runners = {}
    for variant, (kind, make_tx) in variants.items():
        runners[variant] = Runner(kind, make_tx(), params, batch, model_step)
        print(f"  compiled {variant}", flush=True)
    ratios = {v: {"non_sync": [], "sync": [], "mean": []} for v in variants}
    seconds = {v: {"non_sync": [], "sync": [], "mean": []} for v in variants}
    for repetition in range(repetitions):
        for variant, runner in runners.items():
            runner.align()
            per_step = runner.timed_steps(periods * SYNC_PERIOD, blocked=True)
            runner.align()
            total = runner.timed_steps(periods * SYNC_PERIOD, blocked=False)
            # phase 0 is the step after a sync: the sync is the one whose phase
            # (counted before the step) is SYNC_PERIOD - 1.
            sync = [t for phase, t in per_step if phase == SYNC_PERIOD - 1]
            non_sync = [t for phase, t in per_step if phase != SYNC_PERIOD - 1]
            seconds[variant]["sync"].append(statistics.median(sync))
            seconds[variant]["non_sync"].append(statistics.median(non_sync))
            seconds[variant]["mean"].append(total / (periods * SYNC_PERIOD))
        for variant in variants:
            for figure in ("non_sync", "sync", "mean"):
                base = seconds["adam"][figure][repetition]
                if figure == "sync":  # adam has no sync: compare with its step
                    base = seconds["adam"]["non_sync"][repetition]
                ratios[variant][figure].append(
                    seconds[variant][figure][repetition] / base
                )
        print(f"  repetition {repetition + 1}/{repetitions} done", flush=True)

    adam = runners["adam"]
    results = {}
    for variant, runner in runners.items():
        results[variant] = {
            "time_ratio": {f: statistics.median(r) for f, r in ratios[variant].items()},
            "time_ratio_spread": {
                f: [min(r), max(r)] for f, r in ratios[variant].items()
            },
            "adam_seconds": {
                f: statistics.median(seconds["adam"][f]) for f in ("non_sync", "mean")
            },
            "bytes_ratio": {
                label: runner.compiled[label]["bytes"]
                / adam.compiled["non_sync"]["bytes"]
                for label in ("non_sync", "sync")
            },
            "temp_bytes": runner.compiled["temp_bytes"],
            "xla_bytes_ratio": runner.compiled["xla_bytes"]
            / adam.compiled["xla_bytes"],
            "param_copies": {
                label: runner.compiled[label]["param_copies"]
                for label in ("non_sync", "sync")
            },
            "adam_bytes_check": [
                adam.compiled["non_sync"]["bytes"],
                adam.compiled["xla_bytes"],
            ],
            "extra_state_param_copies": (runner.state_bytes - adam.state_bytes)
            / state_bytes(params),
        }
    for runner in runners.values():
        del runner.params, runner.state
    return results


def markdown(all_results, workloads_meta):
    lines = []
    for workload, results in all_results.items():
        meta = workloads_meta[workload]
        lines.append(f"\n### {workload}\n")
        lines.append(
            f"adam step: {1e3 * results['adam']['adam_seconds']['non_sync']:.2f} ms"
            f" ({meta})\n"
        )
        lines.append(
            "| variant | time non-sync | time sync | time mean | bytes non-sync |"
            " bytes sync | temp MiB | param-size copies | extra state"
            " (param copies) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for variant, r in results.items():
            t, b = r["time_ratio"], r["bytes_ratio"]
            temp = f"{r['temp_bytes'] / 2**20:.1f}"
            copies = "/".join(str(r["param_copies"][k]) for k in ("non_sync", "sync"))
            lines.append(
                f"| `{variant}` | {t['non_sync']:.2f}x | {t['sync']:.2f}x |"
                f" {t['mean']:.2f}x | {b['non_sync']:.2f}x | {b['sync']:.2f}x |"
                f" {temp} | {copies} | {r['extra_state_param_copies']:.2f} |"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 reps")
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--periods", type=int, default=4, help="periods per measure")
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=["dense", "embedding_1pct", "embedding_all", "model"],
    )
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--no-reexec", action="store_true", help="skip the malloc tunables (GPU)"
    )
    args = parser.parse_args()
    if args.repetitions < 1 or args.periods < 1:
        parser.error("--repetitions and --periods must be >= 1")
    repetitions = 2 if args.quick else args.repetitions

    dense_names = [
        "adam",
        "optax.lookahead(adam)",
        "lookahead(adam)",
        "update_and_apply(lookahead(adam))",
        "lookahead(adam) [branch]",
        "lookahead(adam) [select]",
        "update_and_apply(lookahead(adam)) [branch]",
        "update_and_apply(lookahead(adam)) [select]",
    ]
    lazy_names = [
        "adam",
        "lazy_mask(adam)",
        "lazy_mask(adam, freeze_state)",
        "lookahead(lazy_mask(adam))",
        "update_and_apply(lookahead(lazy_mask(adam)))",
    ]
    all_names = list(dict.fromkeys(dense_names[:4] + lazy_names))
    results, meta = {}, {}
    for workload in args.workloads:
        if workload == "dense":
            params = dense_params(args.quick)
            batch = jax.tree.map(lambda x: 1e-3 * x, params)
            names, model_step = dense_names, False
            meta[workload] = (
                f"{sum(x.size for x in jax.tree.leaves(params)):,} f32 params"
            )
        elif workload.startswith("embedding"):
            params = embedding_params(args.quick)
            fraction = 0.01 if workload == "embedding_1pct" else 1.0
            batch = sampled_grads(params, fraction)
            names, model_step = lazy_names, False
            rows = params["embedding"].shape
            meta[workload] = (
                f"table {rows[0]:,} x {rows[1]}, {fraction:.0%} rows sampled"
            )
        elif workload == "model":
            params = lstm_model_params(args.quick)
            rng = np.random.default_rng(0)
            vocab = params["embedding"].shape[0]
            batch = (
                jnp.asarray(rng.integers(0, vocab, size=(32, 80))),
                jnp.asarray(rng.integers(0, 2, size=32).astype(np.float32)),
            )
            names, model_step = all_names, True
            meta[workload] = (
                "IMDB model Embed(20000,128)-LSTM(128)-Dense(1), batch 32 x 80 tokens,"
                " forward + backward + update"
            )
        else:
            parser.error(f"unknown workload {workload!r}")
        results[workload] = measure_workload(
            workload,
            params,
            batch,
            optimizer_variants(names),
            repetitions,
            args.periods,
            model_step,
        )
    device = jax.devices()[0]
    header = {
        "date": datetime.date.today().isoformat(),
        "device": f"{device.platform}: {device.device_kind}",
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "repetitions": repetitions,
        "periods": args.periods,
        "sync_period": SYNC_PERIOD,
        "command": "python " + " ".join(sys.argv),
    }
    table = markdown(results, meta)
    print(json.dumps(header, indent=1))
    print(table)
    if args.out:
        results_file.write(args.out, header, results, table)


if __name__ == "__main__":
    main()
