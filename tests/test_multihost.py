"""Multi-process JAX: lookahead, lazy_mask and sparse_lazy across processes.

Each test here starts local worker processes (``tests/multihost_worker.py``)
that join through ``jax.distributed.initialize`` on ``127.0.0.1`` with gloo CPU
collectives, two CPU devices each, and train on one global mesh over all their
devices, each process feeding its own slice of every global batch. The results
are compared with a single process holding the same number of devices and the
whole batch, and a checkpoint written by all processes with Orbax between two
syncs is resumed in a fresh set of processes.

Run alone with ``pytest tests/test_multihost.py``: 10 worker processes in all,
about 160 s of CPU time (3 minutes on 2 busy cores). Every wait is bounded: a
worker set that has not finished after ``TIMEOUT`` seconds is killed, process
group and all, and the workers' output is shown.

Tolerance against the single process: the multi-process runs are bit-identical
among their processes and to each other when resumed, but not to the single
process, because gloo's all-reduce adds the devices' partial sums in another
order than XLA's in-process all-reduce (the gradients of a batch sharded over
devices are all-reduced). In float32 that changes sums by
an ulp; eight Adam steps later the params differ by a few ulps (at most
4.8e-7 measured). So values are compared with ``atol=1e-6, rtol=1e-5``, and
what must be exact is checked exactly: step counts, and rows never sampled,
which must not have moved at all.
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import chex
import numpy as np
import pytest

from tests import multihost_worker as worker

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEVICES_PER_PROCESS = 2
TIMEOUT = 240  # seconds for one set of workers, started together
TOLERANCE = {"atol": 1e-6, "rtol": 1e-5}  # see the module docstring

pytestmark = [
    pytest.mark.multihost,
    pytest.mark.slow,
    pytest.mark.skipif(
        sys.platform == "win32", reason="gloo CPU collectives need Linux or macOS"
    ),
]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(mode, directory, processes, devices_per_process):
    """Starts one set of workers: ``processes`` of them, joined on one port."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port() if processes > 1 else 0
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
    }
    workers = []
    for process_id in range(processes):
        log = directory / f"{mode}-{process_id}.log"
        command = [sys.executable, "-m", "tests.multihost_worker", mode]
        command += [str(directory), str(processes), str(process_id), str(port)]
        with log.open("w") as stream:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        workers.append((process, log))
    return workers


def kill(workers):
    for process, _ in workers:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_all(workers, timeout=TIMEOUT):
    """Waits for every worker; on a failure or the deadline, kills them all."""
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while any(process.poll() is None for process, _ in workers):
            if any(process.poll() not in (None, 0) for process, _ in workers):
                break  # one failed: the others would wait for it until timeouts
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        kill(workers)
    if all(process.returncode == 0 for process, _ in workers):
        return
    report = [f"worker set timed out after {timeout} s"] if timed_out else []
    for process, log in workers:
        text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if not line.startswith("[Gloo]")]
        report.append(f"--- {log.name}: exit code {process.returncode}")
        report.append("\n".join(lines[-60:]))
    pytest.fail("\n".join(report), pytrace=False)


def run_sets(*sets):
    """Starts several worker sets at once (they overlap on the cores) and waits."""
    workers = []
    try:
        for mode, directory, processes, devices in sets:
            workers += start(mode, directory, processes, devices)
    except BaseException:
        kill(workers)
        raise
    wait_all(workers)


def load(directory, mode, process_id=0):
    with np.load(directory / f"{mode}-{process_id}.npz") as data:
        return {key: data[key] for key in data.files}


def part(results, prefix):
    return {k: v for k, v in results.items() if k.startswith(prefix + "[")}


@pytest.fixture(scope="module")
def scratch():
    directory = pathlib.Path(tempfile.mkdtemp(prefix="multihost-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def two_processes(scratch):
    """2 processes x 2 devices, beside 1 process x 4 devices; then a resume."""
    multi, single = scratch / "two", scratch / "two-single"
    run_sets(
        ("checkpoint", multi, 2, DEVICES_PER_PROCESS),
        ("train", single, 1, 2 * DEVICES_PER_PROCESS),
    )
    run_sets(("resume", multi, 2, DEVICES_PER_PROCESS))  # fresh processes
    return multi, single


@pytest.fixture(scope="module")
def four_processes(scratch):
    """4 processes x 2 devices, beside 1 process x 8 devices."""
    multi, single = scratch / "four", scratch / "four-single"
    run_sets(
        ("train", multi, 4, DEVICES_PER_PROCESS),
        ("train", single, 1, 4 * DEVICES_PER_PROCESS),
    )
    return multi, single


@pytest.fixture(params=[2, 4], ids=["2-processes", "4-processes"])
def trained(request):
    """(results of every process, the single process's results) for N processes."""
    multi, single = request.getfixturevalue(
        {2: "two_processes", 4: "four_processes"}[request.param]
    )
    every = [load(multi, "train", i) for i in range(request.param)]
    return every, load(single, "train")


def assert_count_exact(got, want):
    for key, value in want.items():
        if key.endswith((".count", ".step", ".num_touched", ".every_row")):
            chex.assert_trees_all_equal(got[key], value)


def test_every_process_sees_the_same_global_values(trained):
    every, _ = trained
    assert len(every[0]) > 0
    for other in every[1:]:
        chex.assert_trees_all_equal(other, every[0])


def test_lazy_lookahead_matches_one_process(trained):
    every, single = trained
    got, want = part(every[0], "dense"), part(single, "dense")
    assert got.keys() == want.keys() and len(got) >= 9  # params, slow, moments
    chex.assert_trees_all_close(got, want, **TOLERANCE)
    assert_count_exact(got, want)

    # Rows no batch sampled never move, although the L2 term in the loss gives
    # them a gradient: only the ids passed as sampled_rows count. They are in
    # other processes' shards than the ids that sampled the other rows.
    start = worker.host_params()
    for table, seen in (("a", worker.SEEN_WORDS), ("b", worker.SEEN_TAGS)):
        for where in ("['params']", "['opt_state'].slow"):
            final = got[f"dense{where}['{table}']['embedding']"]
            initial = start[table]["embedding"]
            chex.assert_trees_all_equal(final[seen:], initial[seen:])
            assert np.all(np.any(final[:seen] != initial[:seen], axis=1))


def test_data_parallel_ids_combined_across_processes(trained):
    """shard_map, params replicated, each device passing only its own ids.

    lazy_mask(axis_name="x") ORs the row flags over every device of every
    process; the worker checks that all local replicas are equal, and here the
    result matches one process and the sharded jit run of the same problem.
    """
    every, single = trained
    got, want = part(every[0], "data_parallel"), part(single, "data_parallel")
    assert got.keys() == want.keys() and len(got) >= 9
    chex.assert_trees_all_close(got, want, **TOLERANCE)
    assert_count_exact(got, want)
    as_jit = {key.replace("data_parallel", "dense", 1): v for key, v in got.items()}
    chex.assert_trees_all_close(as_jit, part(every[0], "dense"), **TOLERANCE)
    start = worker.host_params()
    for table, seen in (("a", worker.SEEN_WORDS), ("b", worker.SEEN_TAGS)):
        final = got[f"data_parallel['params']['{table}']['embedding']"]
        chex.assert_trees_all_equal(final[seen:], start[table]["embedding"][seen:])


def test_sparse_lazy_matches_one_process(trained):
    every, single = trained
    for prefix in ("sparse", "lookahead_sparse"):
        got, want = part(every[0], prefix), part(single, prefix)
        assert got.keys() == want.keys() and len(got) >= 6
        chex.assert_trees_all_close(got, want, **TOLERANCE)
        assert_count_exact(got, want)
        # Ids from SPARSE_SEEN on never occur (and -1 pads the bags): those
        # rows, their slow weights and their Adam moments stay exactly as they
        # started; every other row moved.
        seen, initial = worker.SPARSE_SEEN, worker.sparse_host_params()["embedding"]
        tables = {
            k: v
            for k, v in got.items()
            if k.endswith("['embedding']") and "touched_rows" not in k
        }
        assert len(tables) == (3 if prefix == "sparse" else 4)
        if prefix == "lookahead_sparse":  # rows listed since the last sync
            record = {
                k.rsplit(".", 1)[1]: v
                for k, v in got.items()
                if "touched_rows['embedding']." in k
            }
            assert record.keys() == {"ids", "slot_of_row", "num_touched", "every_row"}
            assert not record["every_row"]
            assert np.all(record["ids"][: int(record["num_touched"])] < seen)
        for key, table in tables.items():
            start = initial if "params" in key or "slow" in key else 0 * initial
            chex.assert_trees_all_equal(table[seen:], start[seen:])
            if "params" in key:
                assert np.all(np.any(table[:seen] != start[:seen], axis=1))


def test_checkpoint_between_syncs_resumes_bit_identically(two_processes):
    multi, _ = two_processes
    uninterrupted = part(load(multi, "train"), "dense")
    for process_id in range(2):
        resumed = load(multi, "resume", process_id)
        assert resumed.keys() == uninterrupted.keys()
        chex.assert_trees_all_equal(resumed, uninterrupted)


@pytest.mark.parametrize("other", ["pullback", "lazy_adam", "adam"])
def test_restore_into_another_optimizer_is_refused(two_processes, other):
    multi, _ = two_processes
    for process_id in range(2):
        refusals = json.loads((multi / f"refusals-{process_id}.json").read_text())
        outcome = refusals[other]
        assert outcome["type"] == "ValueError", outcome
        assert "opt_state" in outcome["message"], outcome
