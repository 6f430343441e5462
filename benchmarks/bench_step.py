"""Step cost of lookahead and lazy_mask against optax.adam, as ratios.

Every variant is a jitted step that donates params and optimizer state:
``updates, state = tx.update(grads, state, params); params += updates`` (or
the fused ``update_and_apply``). A variant named ``... [lookahead_jit]`` runs
the same step through ``optax_lookahead.lookahead_jit`` instead of
``jax.jit``: one program per lookahead phase (first update, sync, between
syncs), chosen on the host from the state's step count, so that a non-sync
step is the inner optimizer's own program. Variants are measured
interleaved, in one process, over several repetitions (``optax.adam`` and
``optax.lookahead(adam)`` among them); each figure is a ratio to ``optax.adam``
measured in the same repetition, and the table shows the median over
repetitions. Four workloads: ~16.8M dense float32 params (``dense``); an
embedding table of 200,000 x 128 with 1% and 100% of rows sampled
(``embedding_1pct``, ``embedding_all``); and the whole training step of the
IMDB-size model, Embed(20000,128) -> LSTM(128) -> Dense(1) on a batch of 32 x
80 tokens, forward and backward included (``model``; its sparse variants take
the embedding's gradient as the looked-up rows, ``gather_rows`` and
``sparse_rows``).

Time figures (ratios), each measured with glibc's default malloc and with the
tunables in harness.py (``--malloc``):
- non-sync: median time of a blocked step that is not a sync;
- sync: median time of a blocked sync step;
- mean: an unblocked run of whole periods (k=5 steps), divided by its steps.
Every step is a call of what the variant jits: for ``[lookahead_jit]`` the
host's reading of the step count and its choice of program are in the time.
Before timing, each variant runs one whole period, so that every program it
runs (lookahead_jit's three) is compiled.
Compiled-program figures (machine independent, from XLA's own analysis):
- bytes: bytes accessed along the non-sync and the sync path of the compiled
  step. XLA's ``cost_analysis()`` reports a ``lax.cond`` as its most expensive
  branch, so hlo_bytes.py sums XLA's per-instruction figure (operands plus
  result) along each path of the optimized HLO; on programs without a cond it
  equals ``cost_analysis()['bytes accessed']`` (tests/test_benchmarks.py). The sync
  path is a steady-state sync, not the first update (see
  ``hlo_bytes.sync_path``). A ``[lookahead_jit]`` variant's figures are read
  from each phase's own program, lowered with the state's step count at 1
  (non-sync) and k - 1 = 4 (sync) (``harness.phase_programs``); its first
  update's program runs once and is not in the steady state;
- temp: ``memory_analysis().temp_size_in_bytes``; for a ``[lookahead_jit]``
  variant whose phase programs differ, non-sync / sync;
- copies: ``copy`` instructions of a param-size shape along each path;
- state: persistent optimizer-state bytes, in param-copies beyond adam's.

Run from the repository root (CPU figures in BENCHMARKS.md):
    python -m benchmarks.bench_step --out benchmarks/results/cpu.json
``--malloc both`` (the default) measures under the tuned malloc in a child
process, then under the default one; ``--quick`` is a smoke run; on a GPU
machine use ``--malloc default`` (benchmarks/gpu_all.sh).
"""

import argparse
import json
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

MODULE = "benchmarks.bench_step"
SYNC_PERIOD = 5
DENSE_SIDE, DENSE_MATRICES = 2048, 4
TABLE_ROWS, TABLE_DIM = 200_000, 128
VOCAB, BATCH, TOKENS = 20_000, 32, 80


# ----------------------------------------------------------------------------
# Workloads: params, one batch of gradients (or data), and the step kinds.


def dense_params(quick):
    side = 512 if quick else DENSE_SIDE
    keys = jax.random.split(jax.random.key(0), DENSE_MATRICES)
    return {f"w{i}": jax.random.normal(k, (side, side)) for i, k in enumerate(keys)}


def embedding_params(quick, rows=TABLE_ROWS, dim=TABLE_DIM):
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
    """Variant name -> (step kind, optimizer factory); a ``[lookahead_jit]``
    name has its base variant's, and only its jit differs."""
    adam = lambda: optax.adam(1e-3)

    def staged(inner, staging):
        return lambda: lookahead(inner(), SYNC_PERIOD, sync_staging=staging)

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
        # The two ways to stage the sync, chosen explicitly (the default,
        # "auto", picks "cond" on CPU and "select" elsewhere).
        "lookahead(adam) [cond]": ("plain", staged(adam, "cond")),
        "lookahead(adam) [select]": ("plain", staged(adam, "select")),
        "update_and_apply(lookahead(adam)) [cond]": ("fused", staged(adam, "cond")),
        "update_and_apply(lookahead(adam)) [select]": (
            "fused",
            staged(adam, "select"),
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
        # Model workload only: the embedding's gradient as the looked-up rows.
        "sparse_lazy(adam)": ("sparse", lambda: sparse_lazy(adam())),
        "update_and_apply(lookahead(sparse_lazy(adam)))": (
            "sparse",
            lambda: lookahead(sparse_lazy(adam()), SYNC_PERIOD),
        ),
    }
    return {name: table[name.removesuffix(harness.LOOKAHEAD_JIT)] for name in names}


def make_step(kind, tx):
    """A step (params, state, batch) -> (params, state), given the grads."""
    if kind in ("fused", "sparse"):
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
    vocab, dim = (2000 if quick else VOCAB), 128
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


def lstm_loss(params, words, labels, embedded=None):
    """The model's loss; ``embedded`` (the looked-up rows) replaces the lookup
    when given, so that the gradient can be taken with respect to the rows."""
    if embedded is None:
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
    """Forward, backward and update of the LSTM model on one batch."""
    inner = make_step(kind, tx)

    def step(params, state, batch):
        words, labels = batch
        fast = params.fast if kind == "optax_lookahead_pair" else params
        if kind == "sparse":  # differentiate with respect to the looked-up rows
            table = fast["embedding"]
            rows = gather_rows(table, words)
            grads, row_grads = jax.grad(lstm_loss, argnums=(0, 3))(
                fast, words, labels, rows
            )
            grads = {
                **grads,
                "embedding": sparse_rows(words, row_grads, num_rows=table.shape[0]),
            }
        else:
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


def compiled_figures(jitted, params, state, batch, kind):
    """Per phase ("non_sync", "sync"): bytes and param-size copies along the
    phase's path through its compiled program (see hlo_bytes.py and
    ``harness.phase_programs``), its temp allocation, its conditionals and
    XLA's own bytes figure (which costs a conditional as its dearest branch).
    ``jitted`` is what the benchmark calls, so its compilation is reused."""
    programs = harness.phase_programs(jitted, params, state, batch, SYNC_PERIOD)
    shapes = param_shapes(params.fast if kind == "optax_lookahead_pair" else params)
    figures = {}
    for label, (compiled, path) in programs.items():
        text = compiled.as_text()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        known = path is not None
        figures[label] = {
            "bytes": hlo_bytes.path_bytes(text, path) if known else None,
            "param_copies": hlo_bytes.path_copies(text, path, shapes)
            if known
            else None,
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
            "conditionals": hlo_bytes.conditionals(text),
            "xla_bytes": float(cost.get("bytes accessed", float("nan"))),
        }
    return figures


def state_bytes(state):
    return sum(x.nbytes for x in jax.tree.leaves(state))


class Runner:
    """One compiled, donated step of one variant, with its live buffers."""

    def __init__(self, variant, kind, tx, params, batch, model_step):
        self.kind = kind
        step = (make_model_step if model_step else make_step)(kind, tx)
        self.step = harness.jit_for(variant)(step, donate_argnums=(0, 1))
        self.params, self.state = initial(kind, tx, params)
        self.batch = batch
        self.state_bytes = state_bytes(self.state)
        fast = self.params.fast if kind == "optax_lookahead_pair" else self.params
        if kind == "optax_lookahead_pair":  # its slow copy sits in the params
            self.state_bytes += state_bytes(self.params.slow)
        self.largest_param_bytes = max(x.nbytes for x in jax.tree.leaves(fast))
        # One whole period compiles every program the variant runs (for
        # lookahead_jit: the first update, a non-sync step and a sync).
        self.phase = 0  # steps taken, modulo the period
        self.timed_steps(SYNC_PERIOD, blocked=False)
        self.compiled = compiled_figures(
            self.step, self.params, self.state, batch, kind
        )

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
        runners[variant] = Runner(variant, kind, make_tx(), params, batch, model_step)
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

    adam = runners["adam"].compiled["non_sync"]
    results = {}
    for variant, runner in runners.items():
        phases = runner.compiled
        results[variant] = {
            "program": "lookahead_jit"
            if harness.uses_lookahead_jit(variant)
            else "jax.jit",
            "time_ratio": {f: statistics.median(r) for f, r in ratios[variant].items()},
            "time_ratio_spread": {
                f: [min(r), max(r)] for f, r in ratios[variant].items()
            },
            "adam_seconds": {
                f: statistics.median(seconds["adam"][f]) for f in ("non_sync", "mean")
            },
            "bytes_ratio": {
                label: None
                if phases[label]["bytes"] is None
                else phases[label]["bytes"] / adam["bytes"]
                for label in PHASES
            },
            # The most the step needs: with jax.jit both labels are one program.
            "temp_bytes": max(phases[label]["temp_bytes"] for label in PHASES),
            "temp_bytes_by_phase": {
                label: phases[label]["temp_bytes"] for label in PHASES
            },
            "xla_bytes_ratio": phases["non_sync"]["xla_bytes"] / adam["xla_bytes"],
            "param_copies": {label: phases[label]["param_copies"] for label in PHASES},
            "conditionals": {label: phases[label]["conditionals"] for label in PHASES},
            "adam_bytes_check": [adam["bytes"], adam["xla_bytes"]],
            "extra_state_param_copies": (
                runner.state_bytes - runners["adam"].state_bytes
            )
            / state_bytes(params),
            "largest_param_bytes": runner.largest_param_bytes,
        }
    for runner in runners.values():
        del runner.params, runner.state
    return results


PHASES = ("non_sync", "sync")
WORKLOADS = ("dense", "embedding_1pct", "embedding_all", "model")
LJ = harness.LOOKAHEAD_JIT
DENSE_NAMES = [
    "adam",
    "optax.lookahead(adam)",
    "lookahead(adam)",
    "lookahead(adam)" + LJ,
    "update_and_apply(lookahead(adam))",
    "update_and_apply(lookahead(adam))" + LJ,
    "lookahead(adam) [cond]",
    "lookahead(adam) [select]",
    "update_and_apply(lookahead(adam)) [cond]",
    "update_and_apply(lookahead(adam)) [select]",
]
LAZY_NAMES = [
    "adam",
    "lazy_mask(adam)",
    "lazy_mask(adam, freeze_state)",
    "lookahead(lazy_mask(adam))",
    "lookahead(lazy_mask(adam))" + LJ,
    "update_and_apply(lookahead(lazy_mask(adam)))",
    "update_and_apply(lookahead(lazy_mask(adam)))" + LJ,
]
MODEL_NAMES = [
    *dict.fromkeys(DENSE_NAMES[:6] + LAZY_NAMES),
    "sparse_lazy(adam)",
    "update_and_apply(lookahead(sparse_lazy(adam)))",
    "update_and_apply(lookahead(sparse_lazy(adam)))" + LJ,
]


def describe(workload, quick=False):
    """What a workload measures, for the report."""
    shrink = " (quick sizes)" if quick else ""
    if workload == "dense":
        side = 512 if quick else DENSE_SIDE
        return f"{DENSE_MATRICES * side * side:,} f32 params{shrink}"
    if workload.startswith("embedding"):
        rows = TABLE_ROWS // 20 if quick else TABLE_ROWS
        fraction = 0.01 if workload == "embedding_1pct" else 1.0
        return f"table {rows:,} x {TABLE_DIM}, {fraction:.0%} rows sampled{shrink}"
    vocab = 2000 if quick else VOCAB
    return (
        f"IMDB model Embed({vocab},128)-LSTM(128)-Dense(1), batch {BATCH} x"
        f" {TOKENS} tokens, forward + backward + update (the whole training"
        f" step){shrink}"
    )


def table(runs):
    """The markdown tables of a results file's runs, time figures per malloc
    setting (default / tuned), compiled figures from the first run that has
    them (they do not depend on malloc)."""
    settings = [m for m in harness.MALLOC_ORDER if m in runs]
    quick = any(runs[m]["header"].get("quick") for m in settings)
    workloads = [w for w in WORKLOADS if any(w in runs[m]["results"] for m in settings)]
    lines = []
    for workload in workloads:
        by_malloc = {m: runs[m]["results"].get(workload, {}) for m in settings}
        variants = list(dict.fromkeys(v for r in by_malloc.values() for v in r))
        adam_ms = [
            f"{1e3 * r['adam']['adam_seconds']['non_sync']:.2f} ms {m}"
            for m, r in by_malloc.items()
            if "adam" in r
        ]
        lines.append(f"\n### {workload}\n")
        lines.append(
            f"adam step: {', '.join(adam_ms)} malloc ({describe(workload, quick)})\n"
        )
        lines.append(
            "| variant | time non-sync (default / tuned malloc) | time sync"
            " (default / tuned) | time mean (default / tuned) | bytes non-sync |"
            " bytes sync | temp MiB | param-size copies | extra state"
            " (param copies) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for variant in variants:
            measured = {m: r[variant] for m, r in by_malloc.items() if variant in r}
            first = next(iter(measured.values()))
            times = [
                " / ".join(
                    f"{measured[m]['time_ratio'][figure]:.2f}x"
                    if m in measured
                    else "-"
                    for m in harness.MALLOC_ORDER
                )
                for figure in ("non_sync", "sync", "mean")
            ]
            b = {k: ratio_cell(v) for k, v in first["bytes_ratio"].items()}
            copies = "/".join(
                "-"
                if first["param_copies"][k] is None
                else str(first["param_copies"][k])
                for k in PHASES
            )
            lines.append(
                f"| `{variant}` | {' | '.join(times)} | {b['non_sync']} |"
                f" {b['sync']} | {temp_cell(first)} | {copies} |"
                f" {first['extra_state_param_copies']:.2f} |"
            )
    return "\n".join(lines)


def ratio_cell(value):
    """``1.23x``, or ``-`` for a figure not read (None)."""
    return "-" if value is None else f"{value:.2f}x"


def temp_cell(result):
    """Temp MiB: one figure, or non-sync / sync where the phases' programs
    differ (a ``[lookahead_jit]`` variant)."""
    by_phase = result.get("temp_bytes_by_phase", {})
    if any(label not in by_phase for label in PHASES):
        return f"{result['temp_bytes'] / 2**20:.1f}"
    cells = dict.fromkeys(f"{by_phase[label] / 2**20:.1f}" for label in PHASES)
    return " / ".join(cells)


def workload_inputs(workload, quick):
    """(params, batch, variant names, whether the batch is model data)."""
    if workload == "dense":
        params = dense_params(quick)
        return params, jax.tree.map(lambda x: 1e-3 * x, params), DENSE_NAMES, False
    if workload.startswith("embedding"):
        params = embedding_params(quick)
        fraction = 0.01 if workload == "embedding_1pct" else 1.0
        return params, sampled_grads(params, fraction), LAZY_NAMES, False
    params = lstm_model_params(quick)
    rng = np.random.default_rng(0)
    vocab = params["embedding"].shape[0]
    batch = (
        jnp.asarray(rng.integers(0, vocab, size=(BATCH, TOKENS)), jnp.int32),
        jnp.asarray(rng.integers(0, 2, size=BATCH).astype(np.float32)),
    )
    return params, batch, MODEL_NAMES, True


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 reps")
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--periods", type=int, default=4, help="periods per measure")
    parser.add_argument(
        "--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS
    )
    harness.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.repetitions < 1 or args.periods < 1:
        parser.error("--repetitions and --periods must be >= 1")
    return args


def main():
    args = parse_args()
    malloc = harness.settle_malloc(MODULE, args)
    repetitions = 2 if args.quick else args.repetitions

    results = {}
    for workload in args.workloads:
        params, batch, names, model_step = workload_inputs(workload, args.quick)
        results[workload] = measure_workload(
            workload,
            params,
            batch,
            optimizer_variants(names),
            repetitions,
            args.periods,
            model_step,
        )
        del params, batch
    header = harness.environment(
        MODULE,
        malloc,
        repetitions=repetitions,
        periods=args.periods,
        sync_period=SYNC_PERIOD,
        quick=args.quick,
    )
    print(json.dumps(header, indent=1))
    runs = {malloc: {"header": header, "results": results}}
    if args.out:
        merge = lambda earlier, new: {**earlier, **new}
        runs = harness.write_run(args.out, header, results, merge)["runs"]
    print(table(runs))
    harness.finish(args)


if __name__ == "__main__":
    main()
