"""Writes BENCHMARKS.md from the JSON files in benchmarks/results/.

Run from the repository root after the benchmarks:
    python -m benchmarks.write_report
Every number in BENCHMARKS.md comes from those files (their layout is in
harness.py); the tables are drawn by the benchmarks' own ``table`` functions,
the prose around them is here, with the figures it quotes read from the files.
"""

import json
import pathlib
import textwrap

from benchmarks import bench_sparse, bench_step, harness

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPORT = HERE.parent / "BENCHMARKS.md"


def load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def header_lines(data):
    """One line per malloc setting: where, when and how its figures were made."""
    lines = []
    for malloc in harness.MALLOC_ORDER:
        run = data["runs"].get(malloc)
        if run is None:
            lines.append(f"- malloc {malloc}: not measured yet")
            continue
        header = run["header"]
        tunables = header.get("glibc_tunables") or "unset"
        cpu = f" ({header['cpu']})" if header.get("cpu") else ""
        took = header.get("wall_seconds")
        took = f"; {took:.0f} s" if took is not None else ""
        lines.append(
            f"- malloc {malloc}: date {header['date']}; {header['device']}{cpu},"
            f" {header['cpu_count']} CPU cores; jax {header['jax']}, optax"
            f" {header['optax']}; {header['repetitions']} repetitions;"
            f" GLIBC_TUNABLES {tunables}; command `{header['command']}`{took}"
        )
    return "\n".join(lines) + "\n"


def targets_table(data):
    """Issue 6's targets against the CPU figures, per malloc setting."""
    runs = data["runs"]
    any_run = next(iter(runs.values()))["results"]

    def figure(malloc, workload, variant, name):
        results = runs.get(malloc, {}).get("results", {})
        measured = results.get(workload, {}).get(variant)
        if measured is None:
            return None, None
        low, high = measured["time_ratio_spread"][name]
        return measured["time_ratio"][name], f"{low:.2f}-{high:.2f}"

    la, fused = "lookahead(adam)", "update_and_apply(lookahead(adam))"
    su, frozen = "lazy_mask(adam)", "lazy_mask(adam, freeze_state)"
    timed = [
        ("`lookahead(adam)` non-sync step", 1.20, "dense", la, "non_sync"),
        ("`lookahead(adam)` mean over a period", 1.40, "dense", la, "mean"),
        (
            "`lookahead(adam)` non-sync, the identical program measured again"
            " (`[cond]`)",
            1.20,
            "dense",
            "lookahead(adam) [cond]",
            "non_sync",
        ),
        (
            "`update_and_apply(lookahead(adam))` non-sync",
            1.02,
            "dense",
            fused,
            "non_sync",
        ),
        ("`update_and_apply(lookahead(adam))` mean", 1.10, "dense", fused, "mean"),
        ("`lazy_mask(adam)`, all rows sampled", 1.25, "embedding_all", su, "non_sync"),
        (
            "`lazy_mask(adam, freeze_state=True)`, all rows sampled",
            1.25,
            "embedding_all",
            frozen,
            "non_sync",
        ),
    ]
    lines = [
        "| figure | target | default malloc (median) | tuned malloc (median) |"
        " spread over repetitions (default / tuned) | |",
        "|---|---|---|---|---|---|",
    ]
    for name, limit, workload, variant, which in timed:
        if variant not in any_run.get(workload, {}):
            continue
        cells, spreads, verdicts = [], [], []
        for malloc in harness.MALLOC_ORDER:
            value, spread = figure(malloc, workload, variant, which)
            cells.append("-" if value is None else f"{value:.2f}x")
            spreads.append(spread or "-")
            if value is not None:
                verdict = "met" if value <= limit else f"missed by {value - limit:.2f}x"
                verdicts.append(f"{malloc}: {verdict}")
        lines.append(
            f"| {name} | <= {limit:.2f}x | {cells[0]} | {cells[1]} |"
            f" {' / '.join(spreads)} | {'; '.join(verdicts)} |"
        )
    dense, every = any_run["dense"], any_run["embedding_all"]
    bytes_ratio = dense[la]["bytes_ratio"]["non_sync"]
    copies = dense[la]["param_copies"]
    compiled = [  # read from the compiled program: the same under both settings
        (
            "bytes accessed, non-sync step",
            "<= 1.25x",
            f"{bytes_ratio:.2f}x",
            "met" if bytes_ratio <= 1.25 else f"missed by {bytes_ratio - 1.25:.2f}x",
        ),
        (
            "param-size copies per step, `lookahead(adam)`",
            "0",
            f"{copies['non_sync']} non-sync, {copies['sync']} sync",
            "",
        ),
        (
            "persistent memory",
            "adam + one param copy",
            f"adam + {dense[la]['extra_state_param_copies']:.2f}",
            "",
        ),
        (
            "table-size temporaries, `lazy_mask(adam)` / frozen",
            "none",
            f"{every[su]['temp_bytes'] / 2**20:.1f} MiB /"
            f" {every[frozen]['temp_bytes'] / 2**20:.0f} MiB",
            "",
        ),
    ]
    for name, target, value, verdict in compiled:
        lines.append(
            f"| {name} | {target} | {value} | {value} | compiled | {verdict} |"
        )
    return "\n".join(lines)


# Issue 12's fast paths: the step through lookahead_jit, fused and drop-in.
FAST_PATHS = (
    "update_and_apply(lookahead(adam))" + harness.LOOKAHEAD_JIT,
    "lookahead(adam)" + harness.LOOKAHEAD_JIT,
)
SPARSE_LOOKAHEADS = (
    "lookahead(sparse_lazy(adam))",
    "lookahead(sparse_lazy(adam))" + harness.LOOKAHEAD_JIT,
)


def floor_table(step_data, sparse_data=None, mean_limit=1.10):
    """Issue 12's targets (the speed floor) against one machine's figures, per
    malloc setting; None where the runs have no ``[lookahead_jit]`` variant.

    From ``step_data`` (bench_step, dense workload): each fast path's non-sync
    program against adam's (bytes, param-size copies, temporaries no larger
    than a param), its mean over a period against ``mean_limit`` and against
    ``optax.lookahead(adam)`` in the same run. From ``sparse_data``
    (bench_sparse, optimizer step), where given: ``lookahead(sparse_lazy(adam))``
    with 1% of 200,000 rows sampled against 0.05x dense adam, and the time of
    2,000 sampled rows in a table of 200,000 and of 2,000,000 rows.
    """
    runs = step_data["runs"]
    dense = {
        m: runs[m]["results"].get("dense", {})
        for m in harness.MALLOC_ORDER
        if m in runs
    }
    compiled = next(iter(dense.values()), {})  # the same under both settings
    fast = [v for v in FAST_PATHS if v in compiled]
    if not fast:
        return None
    lines = [
        "| figure | target | default malloc | tuned malloc | |",
        "|---|---|---|---|---|",
    ]

    def row(name, target, values, limit, compiled_value=None, digits=2):
        """``values``: malloc -> figure (None: not measured); a figure read
        from the compiled program is the same in both columns."""
        cells, verdicts = [], []
        for malloc in harness.MALLOC_ORDER:
            value = values.get(malloc)
            shown = "-" if value is None else f"{value:.{digits}f}x"
            cells.append(compiled_value or shown)
            if value is not None and limit is not None:
                missed = f"missed by {value - limit:.{digits}f}x"
                verdict = "met" if value <= limit else missed
                verdicts.append(verdict if compiled_value else f"{malloc}: {verdict}")
        verdicts = list(dict.fromkeys(verdicts))
        lines.append(
            f"| {name} | {target} | {cells[0]} | {cells[1]} | {'; '.join(verdicts)} |"
        )

    def timed(variant, figure):
        return {
            m: d[variant]["time_ratio"][figure]
            for m, d in dense.items()
            if variant in d
        }

    for variant in fast:
        first = compiled[variant]
        bytes_ratio = first["bytes_ratio"]["non_sync"]
        copies = first["param_copies"]["non_sync"]
        temp = first.get("temp_bytes_by_phase", {}).get("non_sync")
        largest = first.get("largest_param_bytes")
        row(
            f"`{variant}` bytes accessed, non-sync step",
            "<= 1.01x adam",
            dict.fromkeys(dense, bytes_ratio),
            1.01,
            f"{bytes_ratio:.3f}x (compiled)",
        )
        row(
            f"`{variant}` param-size copies, non-sync step",
            "0",
            dict.fromkeys(dense, copies),
            0,
            f"{copies} (compiled)",
        )
        if temp is not None and largest:
            row(
                f"`{variant}` temporaries, non-sync step",
                "none table-size",
                dict.fromkeys(dense, temp / largest),
                0.999,  # under one param-size buffer
                f"{temp / 2**20:.1f} MiB, largest param {largest / 2**20:.0f} MiB",
            )
        row(
            f"`{variant}` mean over a period",
            f"<= {mean_limit:.2f}x adam",
            timed(variant, "mean"),
            mean_limit,
        )
        baseline = timed("optax.lookahead(adam)", "mean")
        own = timed(variant, "mean")
        row(
            f"`{variant}` mean, over `optax.lookahead(adam)`'s in the same run",
            "< 1 (ahead)",
            {m: own[m] / baseline[m] for m in own if m in baseline},
            0.999,
        )
    for variant in SPARSE_LOOKAHEADS if sparse_data else ():
        figures = _sparse_figures(sparse_data, variant)
        small, large = figures.get((200_000, 0.01)), figures.get((2_000_000, 0.001))
        if small:
            row(
                f"`{variant}` mean, 1% of 200,000 rows sampled",
                "<= 0.05x dense adam",
                {m: f["time_ratio"] for m, f in small.items()},
                0.05,
                digits=3,
            )
        if small and large:
            cells = [
                f"{1e3 * small[m]['seconds']:.2f} / {1e3 * large[m]['seconds']:.2f} ms"
                if m in small and m in large
                else "-"
                for m in harness.MALLOC_ORDER
            ]
            lines.append(
                f"| `{variant}` mean, 2,000 rows sampled of 200,000 / of 2,000,000"
                f" | follows the rows, not the table | {cells[0]} | {cells[1]} | |"
            )
    return "\n".join(lines)


def _sparse_figures(data, variant):
    """(rows, fraction) -> malloc -> the variant's optimizer-step figures."""
    figures = {}
    for malloc, run in data["runs"].items():
        for result in run["results"]:
            figure = result["optimizer"].get(variant)
            if figure is not None:
                key = (result["rows"], result["fraction"])
                figures.setdefault(key, {})[malloc] = figure
    return figures


def lookahead_target_note(cpu):
    """The note on the in-graph ``lookahead(adam)`` and ``update_and_apply``
    steps against issue 6's targets, every figure read from ``cpu``."""
    runs = cpu["runs"]
    dense = {m: runs[m]["results"]["dense"] for m in harness.MALLOC_ORDER if m in runs}
    compiled = next(iter(dense.values()))  # the same under both settings
    plain, fused = "lookahead(adam)", "update_and_apply(lookahead(adam))"
    jit = plain + harness.LOOKAHEAD_JIT

    def times(variant, phase):
        return " / ".join(
            f"{d[variant]['time_ratio'][phase]:.2f}x" if variant in d else "-"
            for d in dense.values()
        )

    text = (
        f"`{plain}` and `{fused}` in one `jax.jit` program: the non-sync step"
        f" moves {compiled[plain]['bytes_ratio']['non_sync']:.2f}x adam's bytes"
        " (the transformation returns the inner updates, and the sync's"
        " `lax.cond` reads them back) and holds"
        f" {compiled[plain]['temp_bytes'] / 2**20:.0f} MiB of temporaries"
        f" (fused: {compiled[fused]['temp_bytes'] / 2**20:.0f} MiB, and"
        f" {compiled[fused]['param_copies']['non_sync']} param-size copies). Its"
        f" time ({' / '.join(dense)} malloc) is {times(plain, 'non_sync')}, and"
        f" {times(fused, 'non_sync')} fused. The program is the same under both"
        " settings: the gap is the cost of allocating its temporaries, which the"
        " tuned settings keep in the heap (`benchmarks/harness.py`; adam has"
        f" {compiled['adam']['temp_bytes']} bytes of them). On the CPU,"
        " `lookahead_jit` (next section)"
        f" is the answer: `{jit}` costs {times(jit, 'non_sync')} between syncs"
        f" and {times(jit, 'mean')} over a period."
    )
    return wrap_bullet(text)


def lazy_mask_target_note(cpu):
    """The notes on ``lazy_mask(adam)`` with and without ``freeze_state`` on
    a table whose rows are all sampled, every figure read from ``cpu`` and
    from the GPU results files."""
    every = next(iter(cpu["runs"].values()))["results"]["embedding_all"]
    su, frozen = every["lazy_mask(adam)"], every["lazy_mask(adam, freeze_state)"]
    on_gpus = []
    for name in gpu_names("gpu"):
        card = name.removeprefix("gpu-").removesuffix(".json").upper()
        for malloc, run in load(name)["runs"].items():
            figure = (
                run["results"]
                .get("embedding_all", {})
                .get("lazy_mask(adam, freeze_state)")
            )
            if figure is not None:
                ratio = figure["time_ratio"]["non_sync"]
                on_gpus.append(f"{ratio:.2f}x adam on the {card}, {malloc} malloc")
    gpu = f" XLA:GPU fuses them ({'; '.join(on_gpus)}; below)." if on_gpus else ""
    frozen_note = (
        "`lazy_mask(adam, freeze_state=True)` on a dense table: the frozen moments"
        " are selected row by row after the inner optimizer ran (the only way that"
        " works for any optimizer). XLA:CPU does not fuse the update with those"
        " selects, so it keeps the old moments alive:"
        f" {frozen['param_copies']['non_sync']} table-size copies and"
        f" {frozen['temp_bytes'] / 2**20:.0f} MiB of temporaries for a"
        f" {frozen['largest_param_bytes'] / 2**20:.0f} MiB table, and"
        f" {frozen['bytes_ratio']['non_sync']:.2f}x adam's bytes.{gpu} For large"
        " tables use `sparse_lazy`, which gives the same results at a cost that"
        " follows the sampled rows."
    )
    su_note = (
        "`lazy_mask(adam)` (Su's variant) adds one pass over the gradient to find"
        " the sampled rows (`sum(abs(g)) != 0` per row):"
        f" {su['bytes_ratio']['non_sync']:.2f}x adam's bytes; its time on this"
        " 2-core machine varies between repetitions (see the spread)."
    )
    return wrap_bullet(frozen_note) + wrap_bullet(su_note)


def gpu_notes(data):
    """How one GPU run was made, and what staging the sync as a ``lax.cond``
    or as a select cost there (figures read from ``data``)."""
    dense = next(iter(data["runs"].values()))["results"].get("dense", {})
    cond, select = (dense.get(f"lookahead(adam) [{way}]") for way in ("cond", "select"))
    staging = ""
    if cond and select:
        staging = (
            " Staged as a `lax.cond`, the sync costs on every step: between syncs"
            f" `lookahead(adam) [cond]` takes {cond['time_ratio']['non_sync']:.2f}x"
            f" adam's time and {cond['bytes_ratio']['non_sync']:.2f}x its bytes"
            " (XLA copies the buffers the branches pass through), `[select]`"
            f" {select['time_ratio']['non_sync']:.2f}x and"
            f" {select['bytes_ratio']['non_sync']:.2f}x."
        )
    text = (
        f"Measured with the device tool's GPU (see the command).{staging} On"
        " platforms other than CPU, lookahead therefore stages its sync as a"
        " select, which fuses into the inner optimizer's kernel. The `[cond]` and"
        " `[select]` rows choose each way (`sync_staging=`), where the run"
        " includes them; runs before the `sync_staging` argument named `[cond]`"
        " `[branch]`. The `[lookahead_jit]` rows compile each phase separately,"
        " with neither."
    )
    return textwrap.fill(text, width=78, break_long_words=False) + "\n"


def wrap_bullet(text):
    """``text`` as a markdown bullet of 78 columns, paths and code unbroken."""
    return (
        textwrap.fill(
            text,
            width=78,
            initial_indent="- ",
            subsequent_indent="  ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        + "\n"
    )


def sparse_target_note(sparse, repeated):
    """The note on ``lookahead(sparse_lazy(adam)) [lookahead_jit]`` against
    its 0.05x target at 1% of 200,000 rows, every figure read from the
    new-rows run (``sparse``) and the same-rows run (``repeated``)."""
    variant, alone = SPARSE_LOOKAHEADS[1], "sparse_lazy(adam)"
    rows, fraction, period = 200_000, 0.01, bench_sparse.SYNC_PERIOD

    def at(data, name, table_rows=rows, sampled=fraction):
        return _sparse_figures(data, name).get((table_rows, sampled), {})

    def ratios(data, name):
        figures = at(data, name)
        return " / ".join(
            f"{figures[m]['time_ratio']:.3f}x" if m in figures else "-"
            for m in harness.MALLOC_ORDER
        )

    sampled = round(rows * fraction)
    touched = rows * (1 - (1 - fraction) ** period)
    # Row read-writes per period: sparse Adam's 3 per sampled row (params and
    # two moments), and the sync's 2 per touched row (params, slow weights).
    predicted = (3 * period * sampled + 2 * touched) / (3 * period * sampled)
    lookahead, inner = at(sparse, variant), at(sparse, alone)
    measured = " / ".join(
        f"{lookahead[m]['seconds'] / inner[m]['seconds']:.2f}x"
        if m in lookahead and m in inner
        else "-"
        for m in harness.MALLOC_ORDER
    )
    # The same number of sampled rows in a table 10 times as large.
    large = at(sparse, variant, 10 * rows, fraction / 10)
    growth = [
        f"{large[m]['seconds'] / lookahead[m]['seconds']:.1f}x ({m} malloc)"
        for m in harness.MALLOC_ORDER
        if m in lookahead and m in large
    ]
    text = (
        f"`{variant}` at {fraction:.0%} of {rows:,} rows: the 0.05x target was set"
        f" on a benchmark that gave every step the same {sampled:,} rows. Measured"
        " that way (`--id-buffers 1`, in"
        " `benchmarks/results/sparse-cpu-repeated-ids.json`), it is"
        f" {ratios(repeated, variant)} (default / tuned malloc; `{alone}` alone"
        f" {ratios(repeated, alone)}). The benchmark now draws new rows every"
        f" step, as training does: the rows are then cold in the cache, `{alone}`"
        f" alone costs {ratios(sparse, alone)}, and a period of {period} steps"
        f" touches about {touched:,.0f} rows (1 - {1 - fraction:g}^{period} of the"
        " table), each of which the sync reads and writes in the params and the"
        " slow weights. That adds 2 row read-writes per touched row to sparse"
        f" Adam's 3 per sampled row (params, two moments): {predicted:.2f}x sparse"
        f" Adam's row traffic per period; measured, {measured} its time. The cost"
        f" still follows the rows: bytes per step are equal at {rows:,} and"
        f" {10 * rows:,} rows (tests/test_touched_rows.py)"
    )
    if growth:
        text += (
            f", and the time of {sampled:,} sampled rows grows"
            f" {', '.join(growth)} with a 10x table (cache and TLB misses over a"
            " larger table)"
        )
    return wrap_bullet(text + ".")


def sparse_notes(data):
    """What the sparse tables measure, and how the runs in ``data`` drew their
    rows and timed them (read from their headers)."""
    headers = [run["header"] for run in data["runs"].values()]
    buffers = {h.get("id_buffers") for h in headers}
    seconds = {h.get("min_sample_seconds") for h in headers}
    text = (
        "Optimizer step: given the gradient; whole training step: lookup,"
        " backward and update of a bag-of-embeddings model. Ratios to dense"
        " `optax.adam` in the same run. "
    )
    if None in buffers:
        text += (
            "These runs predate the current method: every step sampled the"
            " same rows, which stay warm in the cache (this flatters the sparse"
            " paths), and samples were 10 steps long (fixed costs weigh on"
            " a short step). The CPU section's notes give both methods'"
            " figures for the lookahead step at 1%. "
        )
    else:
        text += (
            "Every step samples other rows (the runs cycle through"
            f" {' or '.join(map(str, sorted(buffers)))} id buffers drawn"
            " independently), so a step's rows are mostly cold in the cache"
            " and a lookahead sync interpolates all the rows of its period."
            " Times are means over whole periods (a lookahead's sync, every"
            f" {bench_sparse.SYNC_PERIOD} steps, is in them) of at least"
            f" {' or '.join(f'{s:g}' for s in sorted(seconds))} s. "
        )
    text += (
        "Bytes are along a non-sync and a sync step."
        " `lookahead(sparse_lazy(adam)) [lookahead_jit]` is the same step"
        " through `lookahead_jit`."
    )
    return textwrap.fill(text, width=78, break_long_words=False) + "\n"


def gpu_names(prefix):
    """Results files of GPU runs, e.g. gpu-h200.json, one per card."""
    return sorted(p.name for p in RESULTS.glob(f"{prefix}-*.json"))


def render() -> str:
    """BENCHMARKS.md's text, from the results files."""
    cpu, sparse = load("cpu.json"), load("sparse-cpu.json")
    repeated = load("sparse-cpu-repeated-ids.json")
    parts = [INTRO + stale_note(cpu)]
    if cpu:
        parts += [
            "## Targets of issue 6 (2-core CPU)\n",
            targets_table(cpu),
            "\nWhere a target is missed:\n\n"
            + lookahead_target_note(cpu)
            + lazy_mask_target_note(cpu)
            + (sparse_target_note(sparse, repeated) if sparse and repeated else ""),
        ]
        floor = floor_table(cpu, sparse, mean_limit=1.10)
        if floor:
            parts += [
                "\n## Targets of issue 12, the speed floor (2-core CPU)\n",
                FLOOR_NOTES,
                floor,
            ]
        parts += [
            f"\n## Step cost, CPU\n\n{header_lines(cpu)}",
            bench_step.table(cpu["runs"]),
        ]
    if sparse:
        parts += [
            "\n## Sparse lazy updates, CPU\n",
            sparse_notes(sparse),
            header_lines(sparse),
            bench_sparse.table(sparse["runs"]) + "\n",
        ]
    for name in gpu_names("gpu"):
        card = name.removeprefix("gpu-").removesuffix(".json").upper()
        data = load(name)
        parts += [
            f"\n## Step cost, GPU ({card})\n\n{header_lines(data)}",
            gpu_notes(data),
        ]
        floor = floor_table(data, mean_limit=1.08)
        if floor:
            parts += [f"Targets of issue 12, the speed floor ({card}):\n", floor, ""]
        parts.append(bench_step.table(data["runs"]))
    for name in gpu_names("sparse-gpu"):
        card = name.removeprefix("sparse-gpu-").removesuffix(".json").upper()
        data = load(name)
        parts += [
            f"\n## Sparse lazy updates, GPU ({card})\n",
            sparse_notes(data),
            header_lines(data),
            bench_sparse.table(data["runs"]),
        ]
    return "\n".join(parts) + "\n"


def main():
    REPORT.write_text(render())
    print(f"wrote {REPORT}")


INTRO = """# Benchmarks

Step cost of `lookahead`, `lazy_mask` and `sparse_lazy` as ratios to
`optax.adam`, from `benchmarks/bench_step.py` and `benchmarks/bench_sparse.py`
(their docstrings define every column); this file is written by
`python -m benchmarks.write_report` from the JSON in `benchmarks/results/`,
which also holds each ratio's spread and the raw seconds.

Variants run interleaved in one process; each ratio is taken against adam in
the same repetition, and tables show the median over repetitions. "bytes" and
"param-size copies" are read from the compiled program, so they do not depend
on the machine's noise. XLA's `cost_analysis()` reports a `lax.cond` as its
dearer branch, so "bytes non-sync" and "bytes sync" follow each path through
the optimized HLO (`benchmarks/hlo_bytes.py`, which equals `cost_analysis()`
on programs without a cond; the tests check it). "extra state" is
persistent optimizer memory beyond adam's, in copies of the params.

Every time figure is given twice, "default / tuned": with glibc's default
malloc (what users get) and with the malloc tunables in `benchmarks/harness.py`,
which keep large temporaries in the heap instead of mapping them every step
(`--malloc both`, the default of both benchmarks, runs the tuned setting in a
child process; `benchmarks/harness.py`). A `-` is a setting or variant not
measured yet. The lines under each heading say which command produced which
column, when, and in how many seconds.

Rows named `... [lookahead_jit]` run the same step through
`optax_lookahead.lookahead_jit` instead of `jax.jit`: one compiled program per
lookahead phase (first update, sync, between syncs), chosen on the host from
the state's step count. Their bytes, copies and temporaries are read from each
phase's own program (lowered with the step count at 1 for "non-sync" and at 4
for "sync"; "temp" shows non-sync / sync where the two differ), and their
times are those of calling the `lookahead_jit` function, the host's choice
included.

Run from the repository root (on the 2-core CPU, pause background jobs while
timing):

    python -m benchmarks.bench_step --out benchmarks/results/cpu.json
    python -m benchmarks.bench_sparse --rows 200000 --out benchmarks/results/sparse-cpu.json
    # 2,000,000 rows: every variant at once needs more than 24 GiB, so a few
    python -m benchmarks.bench_sparse --rows 2000000 --fractions 0.001 0.01 \\
        --repetitions 3 --malloc default --out benchmarks/results/sparse-cpu.json \\
        --variants "sparse_lazy(adam)" "lookahead(sparse_lazy(adam)) [lookahead_jit]"
    python -m benchmarks.write_report
    benchmarks/gpu_all.sh   # on a GPU machine: every GPU figure in one call
"""


def stale_note(cpu):
    """A warning where the CPU figures predate the current benchmarks (no
    default-malloc run, no ``[lookahead_jit]`` rows); empty otherwise."""
    if cpu is None:
        return ""
    runs = cpu["runs"]
    dense = [run["results"].get("dense", {}) for run in runs.values()]
    if "default" in runs and any(FAST_PATHS[0] in d for d in dense):
        return ""
    return STALE_NOTE


STALE_NOTE = """
The figures below predate the current benchmarks: the CPU figures were
measured with the tunables only and the GPU figures with the default malloc,
all before the restructuring that added `lookahead(..., sync_staging=)` (the
`[cond]` rows were then forced by a module switch and named `[branch]`) and
before `lookahead_jit`; re-time before quoting them.
"""

FLOOR_NOTES = """The fast path of issue 12: `lookahead_jit` compiles a non-sync step to the
inner optimizer's own program, so its bytes, copies and temporaries there are
adam's; its mean over a period (k = 5) adds the sync and the host's choice of
program. Bytes, copies and temporaries are read from the compiled non-sync
program ("compiled"); times are medians over repetitions, ratios to adam (or
to `optax.lookahead(adam)`) in the same run. The sparse rows are from the
optimizer step of the sparse benchmark below.
"""

if __name__ == "__main__":
    main()
