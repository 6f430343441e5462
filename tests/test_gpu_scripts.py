"""The GPU scripts, run here with a stand-in for Python and for nvidia-smi.

A GPU session is rare and short, so a script that reaches a benchmark with
an argument it refuses wastes it. These tests run ``benchmarks/gpu_all.sh``
and ``optax_lookahead_experiments/gpu_grid.sh`` with ``PYTHON`` set to a stub
that records each ``python -m module ...`` command instead of running it,
then parse every recorded command with the module's own argument parser.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import bench_sparse, bench_step
from optax_lookahead_experiments.imdb import reproduce

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARSERS = {
    "benchmarks.bench_step": bench_step.parse_args,
    "benchmarks.bench_sparse": bench_sparse.parse_args,
    "optax_lookahead_experiments.imdb.reproduce": reproduce.parse_args,
}
STUB = """#!{python}
import json, os, sys
if sys.argv[1] == "-m":  # record the command; "-c" checks just succeed
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(json.dumps(sys.argv[2:]) + "\\n")
"""


def run_with_stubs(tmp_path, script, *args, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\n")
    stub = bin_dir / "python-stub"
    stub.write_text(STUB.format(python=sys.executable))
    for tool in (smi, stub):
        tool.chmod(0o755)
    log = tmp_path / "commands.jsonl"
    environment = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHON=str(stub),
        STUB_LOG=str(log),
        **env,
    )
    environment.pop("OUT", None)
    result = subprocess.run(
        ["bash", script, *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    parsed = []
    for module, *arguments in commands:
        try:
            parsed.append((module, PARSERS[module](arguments)))
        except SystemExit:  # argparse printed why on stderr
            pytest.fail(f"{script}: {module} refuses {arguments}")
    return parsed


def test_gpu_benchmarks_script_runs_every_stage_with_accepted_arguments(tmp_path):
    out = tmp_path / "out"
    parsed = run_with_stubs(tmp_path, "benchmarks/gpu_all.sh", str(out))
    assert [module for module, _ in parsed] == [
        "benchmarks.bench_step",
        "benchmarks.bench_sparse",
        "benchmarks.bench_step",
        "benchmarks.bench_step",
        "benchmarks.bench_sparse",
    ]
    for module, args in parsed:
        assert args.malloc == "default"  # host malloc does not move GPU times
        kind = "sparse-gpu" if module.endswith("sparse") else "gpu"
        assert args.out == str(out / f"{kind}-h100.json")
    workloads = [w for m, a in parsed if m.endswith("step") for w in a.workloads]
    assert sorted(workloads) == sorted(bench_step.WORKLOADS)
    assert [a.rows for m, a in parsed if m.endswith("sparse")] == [
        [200_000],
        [2_000_000],
    ]


def test_gpu_grid_script_runs_each_optimizer_with_accepted_arguments(tmp_path):
    results = tmp_path / "results"
    parsed = run_with_stubs(
        tmp_path,
        "optax_lookahead_experiments/gpu_grid.sh",
        "--epochs",
        "2",
        RESULTS_DIR=str(results),
    )
    optimizers = [name for _, args in parsed for name in args.optimizers]
    assert sorted(optimizers) == sorted(reproduce.MAIN + reproduce.EXTRA)
    for _, args in parsed:
        assert args.extra_optimizers == []
        assert args.seeds_per_program == len(reproduce.SEEDS)
        assert args.results == results and args.no_step_timing
        assert args.epochs == 2  # extra arguments reach the runner
