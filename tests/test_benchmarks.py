"""The benchmarks run, and write what BENCHMARKS.md is built from.

Timings are not checked here (a shared CI machine's noise would make that a
flaky test); what is checked are the figures read from the compiled programs,
which do not depend on the machine: bytes accessed and copies.
"""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from benchmarks import bench_sparse, bench_step, harness, hlo_bytes, write_report
from optax_lookahead import lookahead, lookahead_jit, update_and_apply
from tests.helpers import standard_promotion

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_benchmark(module, *args):
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def step_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    run_benchmark(
        "bench_step", "--quick", "--malloc", "default", "--periods", "1",
        "--out", str(out), "--workloads", "dense", "embedding_all",
    )  # fmt: skip
    return json.loads(out.read_text())


def test_bench_step_compiled_figures(step_results):
    (run,) = step_results["runs"].values()
    assert run["header"]["malloc"] == "default"
    assert run["header"]["glibc_tunables"] is None
    dense = run["results"]["dense"]
    lookahead_ = dense["lookahead(adam)"]
    # The non-sync step writes the inner updates once more than adam (1.2x),
    # copies no param-size buffer, and keeps one param copy of extra state.
    assert lookahead_["bytes_ratio"]["non_sync"] == pytest.approx(1.2, abs=0.03)
    assert lookahead_["param_copies"] == {"non_sync": 0, "sync": 0}
    assert lookahead_["extra_state_param_copies"] == pytest.approx(1.0, abs=0.01)
    # The fused step applies the inner updates where they are computed.
    fused = dense["update_and_apply(lookahead(adam))"]
    assert fused["bytes_ratio"]["non_sync"] < lookahead_["bytes_ratio"]["non_sync"]
    # optax.lookahead keeps the fast and slow params in its state: more bytes.
    baseline = dense["optax.lookahead(adam)"]["bytes_ratio"]["non_sync"]
    assert baseline > lookahead_["bytes_ratio"]["non_sync"]
    for workload in run["results"].values():
        for variant in workload.values():
            assert all(
                math.isfinite(r) and r > 0 for r in variant["time_ratio"].values()
            )


LJ = harness.LOOKAHEAD_JIT


@pytest.mark.parametrize(
    "workload, variant, inner",
    [
        ("dense", "lookahead(adam)" + LJ, "adam"),
        ("dense", "update_and_apply(lookahead(adam))" + LJ, "adam"),
        ("embedding_all", "lookahead(lazy_mask(adam))" + LJ, "lazy_mask(adam)"),
        (
            "embedding_all",
            "update_and_apply(lookahead(lazy_mask(adam)))" + LJ,
            "lazy_mask(adam)",
        ),
    ],
)
def test_lookahead_jit_non_sync_step_is_the_inner_program(
    step_results, workload, variant, inner
):
    # Issue 12's floor: read from the non-sync phase's own program, the step
    # between syncs moves the inner optimizer's bytes, with no conditional, no
    # param-size copy and no table-size temporary.
    (run,) = step_results["runs"].values()
    results = run["results"][workload]
    fast, own = results[variant], results[inner]
    assert fast["program"] == "lookahead_jit"
    assert fast["bytes_ratio"]["non_sync"] == pytest.approx(
        own["bytes_ratio"]["non_sync"], rel=0.01
    )
    assert fast["param_copies"]["non_sync"] == 0
    assert fast["conditionals"] == {"non_sync": 0, "sync": 0}
    assert fast["temp_bytes_by_phase"]["non_sync"] < fast["largest_param_bytes"]
    # The sync program does the sync's extra pass, read from its own program.
    assert fast["bytes_ratio"]["sync"] > fast["bytes_ratio"]["non_sync"]
    assert fast["extra_state_param_copies"] == pytest.approx(1.0, abs=0.01)


def test_bench_step_feeds_the_report(step_results):
    table = write_report.targets_table(step_results)
    assert "`lookahead(adam)` non-sync step" in table
    assert "`update_and_apply(lookahead(adam))` mean" in table
    assert "param-size copies per step, `lookahead(adam)` | 0 | 0 non-sync" in table
    markdown = bench_step.table(step_results["runs"])
    assert "| `lazy_mask(adam)` |" in markdown
    assert "time non-sync (default / tuned malloc)" in markdown
    assert "| `update_and_apply(lookahead(adam)) [lookahead_jit]` |" in markdown
    floor = write_report.floor_table(step_results)
    fused = "`update_and_apply(lookahead(adam)) [lookahead_jit]`"
    assert f"| {fused} bytes accessed, non-sync step | <= 1.01x adam | 1.000x" in floor
    assert f"| {fused} param-size copies, non-sync step | 0 | 0 (compiled)" in floor
    assert "over `optax.lookahead(adam)`'s in the same run" in floor
    (run,) = step_results["runs"].values()
    assert run["header"]["wall_seconds"] > 0


# The restructured lookahead stages the first update (slow weights from the
# params at step 0) as a conditional ahead of the sync's; with it, XLA:CPU
# copies every param-size buffer the fused step returns, on every step (the
# copies vanish when the slow weights come straight from the state). Strict:
# these pass, and must lose the marker, once the library is fixed.
FIRST_UPDATE_COPIES = pytest.mark.xfail(
    strict=True,
    reason="the first-update conditional makes the fused step copy the params",
)


@FIRST_UPDATE_COPIES
def test_fused_step_moves_no_more_than_adam(step_results):
    (run,) = step_results["runs"].values()
    fused = run["results"]["dense"]["update_and_apply(lookahead(adam))"]
    assert fused["param_copies"]["non_sync"] == 0
    assert fused["bytes_ratio"]["non_sync"] == pytest.approx(1.0, abs=0.01)


@pytest.fixture(scope="module")
def sparse_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "sparse.json"
    run_benchmark(
        "bench_sparse", "--malloc", "both", "--rows", "4000",
        "--fractions", "0.01", "--repetitions", "1", "--out", str(out),
        "--min-sample-seconds", "0.02",
    )  # fmt: skip
    return json.loads(out.read_text())["runs"]


def test_bench_sparse_cost_follows_the_rows_under_both_mallocs(sparse_runs):
    assert list(sparse_runs) == ["default", "tuned"]
    assert sparse_runs["default"]["header"]["glibc_tunables"] is None
    tuned = sparse_runs["tuned"]["header"]
    assert tuned["glibc_tunables"] == harness.GLIBC_TUNABLES
    for run in sparse_runs.values():
        assert run["header"]["id_buffers"] == bench_sparse.ID_BUFFERS > 1
        (result,) = run["results"]
        optimizer = result["optimizer"]
        # 1% of the rows sampled: the sparse step touches a few percent of the
        # bytes of a dense Adam step (the rows, their moments and the small ids).
        assert optimizer["sparse_lazy(adam)"]["bytes_ratio"] < 0.05
        assert optimizer["adam (dense)"]["bytes_ratio"] == 1.0
    table = bench_sparse.table(sparse_runs)
    assert "| 4,000 | 1.0% | `sparse_lazy(adam)` |" in table
    assert "| 4,000 | 1.0% | `lookahead(sparse_lazy(adam)) [lookahead_jit]` |" in table


def test_lookahead_jit_over_sparse_rows_stays_sparse_between_syncs(sparse_runs):
    # Through lookahead_jit the non-sync program is sparse_lazy's own, whatever
    # the in-graph form costs (the strict xfail below), plus the record of the
    # rows touched: a few int32 per id, against rows of 128 floats per id.
    for run in sparse_runs.values():
        (result,) = run["results"]
        optimizer = result["optimizer"]
        fast = optimizer["lookahead(sparse_lazy(adam))" + LJ]
        assert fast["program"] == "lookahead_jit"
        assert fast["bytes_ratio"] == pytest.approx(
            optimizer["sparse_lazy(adam)"]["bytes_ratio"], rel=0.02
        )
        assert fast["bytes_ratio"] < fast["bytes_ratio_sync"]


@FIRST_UPDATE_COPIES
def test_lookahead_over_sparse_rows_stays_sparse_between_syncs(sparse_runs):
    for run in sparse_runs.values():
        (result,) = run["results"]
        assert result["optimizer"]["lookahead(sparse_lazy(adam))"]["bytes_ratio"] < 0.05


def adam():
    # optax.adam is not clean under the tests' strict promotion (conftest.py).
    return standard_promotion(optax.adam(1e-3))


def compiled_text_and_cost(tx, fused=False):
    params = {f"w{i}": jnp.full((64, 32), 0.5 + i) for i in range(3)}
    params["bias"] = jnp.zeros(32)
    grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), params)

    def step(params, state, grads):
        if fused:
            return update_and_apply(tx, params, state, grads)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, tx.init(params), grads)
        .compile()
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return compiled.as_text(), cost["bytes accessed"]


@pytest.mark.parametrize(
    "make_tx, fused",
    [
        (lambda: adam(), False),
        (lambda: lookahead(adam(), sync_staging="select"), False),
        (lambda: lookahead(adam(), sync_staging="select"), True),
    ],
    ids=["adam", "lookahead-select", "update_and_apply-lookahead-select"],
)
def test_hlo_bytes_equal_cost_analysis_without_conditionals(make_tx, fused):
    # The documented claim: on a program without a cond, hlo_bytes counts what
    # XLA's cost_analysis counts, byte for byte.
    text, xla_bytes = compiled_text_and_cost(make_tx(), fused)
    assert hlo_bytes.conditionals(text) == 0
    assert hlo_bytes.path_bytes(text, 0) == xla_bytes
    assert hlo_bytes.path_bytes(text, 1) == hlo_bytes.path_bytes(text, 0)


def test_phase_programs_read_each_phase_of_lookahead_jit():
    # The non-sync phase's program is adam's own (plus lookahead's step count,
    # a few scalars); the sync's moves more; jax.jit's one program serves both,
    # through its conditionals.
    params = {f"w{i}": jnp.full((64, 32), 0.5 + i) for i in range(3)}
    grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), params)
    tx = lookahead(adam(), sync_period=5, sync_staging="cond")

    def step(params, state, grads):
        return update_and_apply(tx, params, state, grads)

    def adam_step(params, state, grads):
        updates, state = adam().update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    assert int(harness.at_step(state, 4).step) == 4
    assert int(state.step) == 0
    phases = harness.phase_programs(
        lookahead_jit(step, donate_argnums=(0, 1)), params, state, grads, 5
    )
    in_graph = harness.phase_programs(
        jax.jit(step, donate_argnums=(0, 1)), params, state, grads, 5
    )
    own = jax.jit(adam_step).lower(params, adam().init(params), grads).compile()
    bytes_ = {
        label: hlo_bytes.path_bytes(compiled.as_text(), path)
        for label, (compiled, path) in phases.items()
    }
    own_bytes = hlo_bytes.path_bytes(own.as_text(), 0)
    assert own_bytes <= bytes_["non_sync"] <= own_bytes + 64
    assert bytes_["sync"] > bytes_["non_sync"]
    for compiled, path in phases.values():
        assert hlo_bytes.conditionals(compiled.as_text()) == 0 and path == 0
    (compiled, _), (same, sync) = in_graph["non_sync"], in_graph["sync"]
    assert compiled is same and sync[:2] == (0, 1)


def test_hlo_bytes_follows_each_path_of_a_cond():
    text, xla_bytes = compiled_text_and_cost(lookahead(adam(), sync_staging="cond"))
    assert hlo_bytes.conditionals(text) == 2  # the first update's, the sync's
    # cost_analysis costs each conditional as its dearest branch.
    assert hlo_bytes.path_bytes(text, (1, 1)) == xla_bytes
    non_sync = hlo_bytes.path_bytes(text, 0)
    sync = hlo_bytes.path_bytes(text, hlo_bytes.sync_path(text))
    assert non_sync < sync < xla_bytes
    with pytest.raises(ValueError, match="fewer branches"):
        hlo_bytes.path_bytes(text, (0,))


def test_results_file_keeps_each_malloc_run_and_merges_configs(tmp_path):
    path = tmp_path / "results.json"

    def header(malloc, command):
        return {"malloc": malloc, "command": command}

    merge = lambda earlier, new: {**earlier, **new}
    harness.write_run(path, header("tuned", "a"), {"dense": 1}, merge)
    harness.write_run(path, header("default", "b"), {"dense": 2}, merge)
    data = harness.write_run(path, header("tuned", "c"), {"model": 3}, merge)
    assert list(data["runs"]) == ["default", "tuned"]
    assert data["runs"]["default"]["results"] == {"dense": 2}
    assert data["runs"]["tuned"]["results"] == {"dense": 1, "model": 3}
    assert data["runs"]["tuned"]["header"]["command"] == "a; c"
    assert json.loads(path.read_text()) == data


def test_merged_results_add_up_their_wall_time(tmp_path):
    path = tmp_path / "results.json"
    merge = lambda earlier, new: {**earlier, **new}
    for workload, seconds in (("dense", 2.0), ("model", 3.5)):
        header = {"malloc": "default", "command": workload, "wall_seconds": seconds}
        data = harness.write_run(path, header, {workload: 1}, merge)
    assert data["runs"]["default"]["header"]["wall_seconds"] == 5.5


def test_report_renders_the_committed_results():
    cpu = write_report.load("cpu.json")
    assert "tuned malloc (median)" in write_report.targets_table(cpu)
    assert "- malloc tuned: date" in write_report.header_lines(cpu)
    assert "| `lookahead(adam) [cond]` |" in bench_step.table(cpu["runs"])
    sparse = write_report.load("sparse-cpu.json")
    assert "`lookahead(sparse_lazy(adam))`" in bench_sparse.table(sparse["runs"])


def test_benchmarks_md_is_what_write_report_renders_from_the_results():
    # Every figure in BENCHMARKS.md comes from benchmarks/results/: a hand
    # edit, or results committed without re-rendering, fails here.
    assert write_report.REPORT.read_text() == write_report.render(), (
        "BENCHMARKS.md is stale: run `python -m benchmarks.write_report`"
    )


def test_sparse_target_note_reads_its_figures_from_the_runs():
    sparse = write_report.load("sparse-cpu.json")
    repeated = write_report.load("sparse-cpu-repeated-ids.json")
    variant = "lookahead(sparse_lazy(adam)) [lookahead_jit]"
    note = " ".join(write_report.sparse_target_note(sparse, repeated).split())
    same_rows = write_report._sparse_figures(repeated, variant)[(200_000, 0.01)]
    same = " / ".join(
        f"{same_rows[m]['time_ratio']:.3f}x" for m in ("default", "tuned")
    )
    assert f"it is {same} (default / tuned malloc;" in note
    # 1 - 0.99^5 of the table, and (3 * 5 * 2,000 + 2 * touched) / (3 * 5 * 2,000).
    touched = 200_000 * (1 - 0.99**5)
    assert f"touches about {touched:,.0f} rows" in note
    assert f"{(30_000 + 2 * touched) / 30_000:.2f}x sparse Adam's row traffic" in note


def test_bench_sparse_refuses_bad_arguments_before_measuring(capsys):
    args = bench_sparse.parse_args(["--variants", "sparse_lazy(adam)"])
    assert args.variants == ["sparse_lazy(adam)"] and args.id_buffers > 1
    for bad in (
        ["--variants", "sparse_lazy(adma)"],  # a typo would measure nothing
        ["--id-buffers", "0"],
        ["--fractions", "0"],
        ["--rows", "0"],
    ):
        with pytest.raises(SystemExit):
            bench_sparse.parse_args(bad)
    assert "unknown --variants ['sparse_lazy(adma)']" in capsys.readouterr().err
