"""Writes BENCHMARKS.md from the JSON files in benchmarks/results/.

Run after the benchmarks:
    python benchmarks/write_report.py
Every number in BENCHMARKS.md comes from those files; the prose around the
tables is here, next to the code that fills them in.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPORT = HERE.parent / "BENCHMARKS.md"


def load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def header_line(header):
    tunables = header.get("glibc_tunables") or "unset"
    return (
        f"date {header['date']}; {header['device']}, {header['cpu_count']} CPU"
        f" cores; jax {header['jax']}, optax {header['optax']};"
        f" {header['repetitions']} repetitions; GLIBC_TUNABLES {tunables};"
        f" command `{header['command']}`"
    )


def targets_table(cpu):
    results = cpu["results"]

    def time(workload, variant, figure):
        return results[workload][variant]["time_ratio"][figure]

    def spread(workload, variant, figure):
        low, high = results[workload][variant]["time_ratio_spread"][figure]
        return f"{low:.2f}-{high:.2f}"

    la, fused = "lookahead(adam)", "update_and_apply(lookahead(adam))"
    su, frozen = "lazy_mask(adam)", "lazy_mask(adam, freeze_state)"
    dense, every = results["dense"], results["embedding_all"]

    def verdict(value, limit):
        return "met" if value <= limit else f"missed by {value - limit:.2f}x"

    rows = [
        (
            "`lookahead(adam)` non-sync step",
            1.20,
            time("dense", la, "non_sync"),
            spread("dense", la, "non_sync"),
        ),
        (
            "`lookahead(adam)` mean over a period",
            1.40,
            time("dense", la, "mean"),
            spread("dense", la, "mean"),
        ),
        (
            "bytes accessed, non-sync step",
            1.25,
            dense[la]["bytes_ratio"]["non_sync"],
            "compiled",
        ),
        (
            "`update_and_apply(lookahead(adam))` non-sync",
            1.02,
            time("dense", fused, "non_sync"),
            spread("dense", fused, "non_sync"),
        ),
        (
            "`update_and_apply(lookahead(adam))` mean",
            1.10,
            time("dense", fused, "mean"),
            spread("dense", fused, "mean"),
        ),
        (
            "`lazy_mask(adam)`, all rows sampled",
            1.25,
            time("embedding_all", su, "non_sync"),
            spread("embedding_all", su, "non_sync"),
        ),
        (
            "`lazy_mask(adam, freeze_state=True)`, all rows sampled",
            1.25,
            time("embedding_all", frozen, "non_sync"),
            spread("embedding_all", frozen, "non_sync"),
        ),
    ]
    twin = "lookahead(adam) [branch]"  # on CPU, the same program as lookahead(adam)
    if twin in dense:
        rows.insert(
            2,
            (
                "`lookahead(adam)` non-sync, the identical program measured again (`[branch]`)",
                1.20,
                time("dense", twin, "non_sync"),
                spread("dense", twin, "non_sync"),
            ),
        )
    lines = [
        "| figure | target | measured (median) | spread over repetitions | |",
        "|---|---|---|---|---|",
    ]
    for name, limit, value, value_spread in rows:
        lines.append(
            f"| {name} | <= {limit:.2f}x | {value:.2f}x | {value_spread} |"
            f" {verdict(value, limit)} |"
        )
    copies = dense[la]["param_copies"]
    lines.append(
        f"| param-size copies per step, `lookahead(adam)` | 0 |"
        f" {copies['non_sync']} non-sync, {copies['sync']} sync | compiled | |"
    )
    lines.append(
        "| persistent memory | adam + one param copy |"
        f" adam + {dense[la]['extra_state_param_copies']:.2f} | | |"
    )
    lines.append(
        "| table-size temporaries, `lazy_mask(adam)` / frozen | none |"
        f" {every[su]['temp_bytes'] / 2**20:.1f} MiB /"
        f" {every[frozen]['temp_bytes'] / 2**20:.0f} MiB | compiled | |"
    )
    return "\n".join(lines)


def main():
    cpu, gpu = load("cpu.json"), load("gpu-h200.json")
    sparse = [part for part in [load("sparse-cpu.json")] if part]
    sparse_gpu = load("sparse-gpu-h200.json")
    parts = [INTRO]
    if cpu:
        parts += [
            "## Targets of issue 6 (2-core CPU)\n",
            targets_table(cpu),
            TARGET_NOTES,
            f"## Step cost, CPU\n\n{header_line(cpu['header'])}\n",
            cpu["markdown"],
        ]
    if sparse:
        parts += ["\n## Sparse lazy updates, CPU\n", SPARSE_NOTES]
        for part in sparse:
            parts += [header_line(part["header"]) + "\n", part["markdown"] + "\n"]
    if gpu:
        parts += [f"\n## Step cost, GPU\n\n{header_line(gpu['header'])}\n", GPU_NOTES]
        parts.append(gpu["markdown"])
    if sparse_gpu:
        parts += [
            f"\n## Sparse lazy updates, GPU\n\n{header_line(sparse_gpu['header'])}\n",
            sparse_gpu["markdown"],
        ]
    REPORT.write_text("\n".join(parts) + "\n")
    print(f"wrote {REPORT}")


INTRO = """# Benchmarks

Step cost of `lookahead`, `lazy_mask` and `sparse_lazy` as ratios to
`optax.adam`, from `benchmarks/bench_step.py` and `benchmarks/bench_sparse.py`
(their docstrings define every column); this file is written by
`benchmarks/write_report.py` from the JSON in `benchmarks/results/`, which
also holds each ratio's spread and the raw seconds.

Variants run interleaved in one process; each ratio is taken against adam in
the same repetition, and tables show the median over repetitions. "bytes" and
"param-size copies" are read from the compiled program, so they do not depend
on the machine's noise. XLA's `cost_analysis()` reports a `lax.cond` as its
dearer branch, so "bytes non-sync" and "bytes sync" follow each path through
the optimized HLO (`benchmarks/hlo_bytes.py`, which equals `cost_analysis()`
on programs without a cond). "extra state" is persistent optimizer memory
beyond adam's, in copies of the params. CPU runs set the glibc malloc tunables
of DESIGN.md section 3 (the scripts re-execute themselves with them).
"""

TARGET_NOTES = """
Where a target is missed:

- `lookahead(adam)` (the plain transformation): its non-sync step writes the
  inner updates out and reads them back through the sync's `lax.cond` (1.20x
  in bytes, the floor for a transformation that must return updates), and the
  sync step moves about 1.9x. The misses are smaller than the spread between
  repetitions on this shared 2-core machine; the identical program, measured
  again in the same run under another name, lands on the other side of the
  target. The fused step (`update_and_apply`, `LookaheadTrainState`) meets its
  tighter targets.

- `lazy_mask(adam, freeze_state=True)` on a dense table: the frozen moments
  are selected row by row after the inner optimizer ran (the only way that
  works for any optimizer). XLA:CPU does not fuse the update with those
  selects, so it keeps the old moments alive with two table-size copies
  (see "param-size copies" and "temp" below). XLA:GPU fuses them (about 1.1x
  on the H200, below). For large tables use `sparse_lazy`, which gives the same
  results at a cost that follows the sampled rows.
- `lazy_mask(adam)` (Su's variant) adds one pass over the gradient to find the
  sampled rows (`sum(abs(g)) != 0` per row), about 1.1x in bytes; its time on
  this 2-core machine varies between repetitions (see the spread).
"""

SPARSE_NOTES = """Optimizer step: given the gradient; whole training step: lookup, backward and
update of a bag-of-embeddings model. Ratios to dense `optax.adam` in the same
run. `lookahead(sparse_lazy(adam))` runs a dense sync every 5 steps, included
in its mean time.
"""

GPU_NOTES = """Measured with the device tool's GPU (see the command). On this GPU XLA copies
every buffer that a `lax.cond` branch passes through, so a sync staged as a
cond costs 1.6x; lookahead therefore stages its sync as a select on platforms
other than CPU, which fuses into the inner optimizer's kernel. The `[branch]`
and `[select]` rows force each way, where the run includes them.
"""


if __name__ == "__main__":
    main()
