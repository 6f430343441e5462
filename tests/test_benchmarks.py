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

import pytest

from benchmarks import write_report

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_benchmark(script, *args):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--no-reexec", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def step_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    run_benchmark(
        "bench_step.py", "--quick", "--periods", "1", "--out", str(out),
        "--workloads", "dense", "embedding_all",
    )  # fmt: skip
    return json.loads(out.read_text())


def test_bench_step_compiled_figures(step_results):
    dense = step_results["results"]["dense"]
    lookahead = dense["lookahead(adam)"]
    # The non-sync step writes the inner updates once more than adam (1.2x),
    # copies no param-size buffer, and keeps one param copy of extra state.
    assert lookahead["bytes_ratio"]["non_sync"] == pytest.approx(1.2, abs=0.03)
    assert lookahead["param_copies"] == {"non_sync": 0, "sync": 0}
    assert lookahead["extra_state_param_copies"] == pytest.approx(1.0, abs=0.01)
    fused = dense["update_and_apply(lookahead(adam))"]
    assert fused["bytes_ratio"]["non_sync"] < lookahead["bytes_ratio"]["non_sync"]
    # optax.lookahead keeps the fast and slow params in its state: more bytes.
    baseline = dense["optax.lookahead(adam)"]["bytes_ratio"]["non_sync"]
    assert baseline > lookahead["bytes_ratio"]["non_sync"]
    for workload in step_results["results"].values():
        for variant in workload.values():
            assert all(
                math.isfinite(r) and r > 0 for r in variant["time_ratio"].values()
            )


def test_bench_step_feeds_the_report(step_results):
    table = write_report.targets_table(step_results)
    assert "`lookahead(adam)` non-sync step" in table
    assert "`update_and_apply(lookahead(adam))` mean" in table
    assert "param-size copies per step, `lookahead(adam)` | 0 | 0 non-sync" in table
    assert "| `lazy_mask(adam)` |" in step_results["markdown"]


def test_bench_sparse_cost_follows_the_rows(tmp_path):
    out = tmp_path / "sparse.json"
    run_benchmark(
        "bench_sparse.py", "--rows", "4000", "--fractions", "0.01",
        "--repetitions", "1", "--out", str(out),
    )  # fmt: skip
    (result,) = json.loads(out.read_text())["results"]
    optimizer = result["optimizer"]
    # 1% of the rows sampled: the sparse step touches a few percent of the
    # bytes of a dense Adam step (the rows, their moments and the small ids).
    assert optimizer["sparse_lazy(adam)"]["bytes_ratio"] < 0.05
    assert optimizer["lookahead(sparse_lazy(adam))"]["bytes_ratio"] < 0.05
    assert optimizer["adam (dense)"]["bytes_ratio"] == 1.0
