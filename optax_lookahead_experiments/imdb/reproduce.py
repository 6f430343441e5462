"""The LazyOptimizer IMDB grid: paired seeds, 15 epochs, resumable run by run.

Writes one small JSON log per run, ``<optimizer>-seed<seed>.json`` under
``--results`` (default ``results/imdb/``), rewritten atomically after every
epoch. A run whose log holds all its epochs is skipped, so the script can be
stopped and started again and goes on where it left off (an unfinished run
restarts from its first epoch).

The grid, in priority order: the main comparison, ``adam``,
``adam_double_count``, ``lazy`` and ``lazy_double_count`` (the seed's actual
configuration) at seeds 0-13, seed group by seed group, so that partial results
are paired; then ``lazy_frozen`` and ``lookahead_lazy`` at the same seeds. Each
seed group of one optimizer trains in one compiled program (``jax.vmap`` over
the seeds, ``--seeds-per-program``), which gives every seed the result it has
alone, up to float rounding.

Every epoch logs the training loss and the accuracy on the validation half,
the test half and the whole held-out set (the seed's protocol); see
``optax_lookahead_experiments.make_results`` for the metrics built from them.

Run (on a shared 2-core CPU; takes hours, resumable):

    nice -n 19 python -m optax_lookahead_experiments.imdb.reproduce \\
        > out/reproduce_imdb.log 2>&1 &

Several processes may share the grid: each claims a run before training it
(an exclusive lock on a ``.claim`` file beside its log) and skips the runs
other processes hold. The kernel drops a lock when its process exits, however
it exits, so the run of a process that died is free again with nothing to
clean up. The locks coordinate processes on one machine (or on a shared file
system that supports ``flock``). On the 2-core CPU, two processes train about
1.6 times as many runs per hour as one (93.7 ms per step alone, 113 and 124 ms
side by side, measured with ``imdb.throughput``).

On a GPU the whole grid fits one call: 339 s on one H100
(``optax_lookahead_experiments/gpu_grid.sh``, logs to ``results/imdb_gpu/``).
"""

import argparse
import datetime
import fcntl
import json
import os
import pathlib
import socket
import time

import optax_lookahead
import optax_lookahead_experiments
from optax_lookahead_experiments import run_info
from optax_lookahead_experiments.imdb import data as imdb_data
from optax_lookahead_experiments.imdb import train as imdb_train
from optax_lookahead_experiments.imdb.demo import optimizer_name, positive_int
from optax_lookahead_experiments.imdb.optimizers import OPTIMIZERS

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
EPOCHS = 15
SEEDS = tuple(range(14))
MAIN = ("adam", "adam_double_count", "lazy", "lazy_double_count")
EXTRA = ("lazy_frozen", "lookahead_lazy")
SEEDS_PER_PROGRAM = 1  # vmap measured no faster on the 2-core CPU (RESULTS.md)
PROTOCOL = (
    "v2: the held-out reviews split into validation and test halves"
    f" (seed {imdb_data.VALIDATION_SEED})"
)


def log_path(results: pathlib.Path, optimizer: str, seed: int) -> pathlib.Path:
    return results / f"{optimizer}-seed{seed}.json"


def is_complete(path: pathlib.Path, epochs: int) -> bool:
    """Whether the log at ``path`` holds ``epochs`` finished epochs."""
    try:
        log = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return len(log.get("epochs", [])) >= epochs


def write_json(path: pathlib.Path, data: dict) -> None:
    """Writes through a temporary file, so a stopped process leaves no torn log."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


def claim_path(log: pathlib.Path) -> pathlib.Path:
    return log.with_name(log.name + ".claim")


# The claims this process holds: claim file -> the descriptor holding its lock.
_held_claims: dict[pathlib.Path, int] = {}


def claim(log: pathlib.Path) -> bool:
    """Claims the run logged at ``log`` for this process; False if a process
    (this one included) holds it.

    A claim is an exclusive ``flock`` on ``<log>.claim``, held until
    ``release`` or until the process exits. The file names the holder, for
    people; nothing reads it.
    """
    path = claim_path(log)
    while True:
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        # The previous holder may have released (and removed) the file between
        # the open and the lock: then the lock is on a file nobody else sees.
        try:
            same_file = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{socket.gethostname()} {os.getpid()}\n".encode())
    _held_claims[path] = descriptor
    return True


def release(log: pathlib.Path) -> None:
    """Gives up this process's claim on the run logged at ``log``, if it has one."""
    path = claim_path(log)
    descriptor = _held_claims.pop(path, None)
    if descriptor is not None:
        # Removed while still locked, so that no one locks a file on its way out.
        path.unlink(missing_ok=True)
        os.close(descriptor)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def plan(
    main: list[str], extra: list[str], seeds: list[int], group: int
) -> list[tuple[str, list[int]]]:
    """The grid in priority order: ``(optimizer, seed group)`` units.

    The main optimizers first, seed group by seed group (all of them on one
    group before the next group), then the extra ones the same way.
    """
    groups = [seeds[i : i + group] for i in range(0, len(seeds), group)]
    return [
        (name, seed_group)
        for names in (main, extra)
        for seed_group in groups
        for name in names
    ]


def todo(units, results: pathlib.Path, epochs: int) -> list[tuple[str, list[int]]]:
    """The units with their unfinished seeds; units with none are dropped."""
    left = []
    for name, seeds in units:
        seeds = [
            s for s in seeds if not is_complete(log_path(results, name, s), epochs)
        ]
        if seeds:
            left.append((name, seeds))
    return left


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument(
        "--optimizers", type=optimizer_name, nargs="+", default=list(MAIN)
    )
    parser.add_argument(
        "--extra-optimizers", type=optimizer_name, nargs="*", default=list(EXTRA)
    )
    parser.add_argument(
        "--seeds-per-program",
        type=positive_int,
        default=SEEDS_PER_PROGRAM,
        help="seeds trained at once under jax.vmap (1: one at a time)",
    )
    parser.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        help="train on the first N training reviews (default: all; for tests)",
    )
    parser.add_argument(
        "--held-out-size",
        type=positive_int,
        default=None,
        help="evaluate on the first N held-out reviews (default: all; for tests)",
    )
    parser.add_argument(
        "--no-step-timing",
        action="store_true",
        help="do not wait for each step to time it (faster on a GPU)",
    )
    parser.add_argument(
        "--results", type=pathlib.Path, default=ROOT / "results" / "imdb"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    print(
        f"code: optax_lookahead from {optax_lookahead.__file__},"
        f" experiments from {optax_lookahead_experiments.__file__};"
        f" logs to {args.results}",
        flush=True,
    )
    seeds = list(dict.fromkeys(args.seeds))
    units = plan(
        list(dict.fromkeys(args.optimizers)),
        [n for n in dict.fromkeys(args.extra_optimizers) if n not in args.optimizers],
        seeds,
        args.seeds_per_program,
    )
    left = todo(units, args.results, args.epochs)
    runs = sum(len(s) for _, s in left)
    print(f"{runs} runs to do, in {len(left)} programs: {left}", flush=True)
    if not left:
        return
    data = imdb_train.prepare(args.train_size, args.held_out_size)
    print(f"data: {data.sizes}", flush=True)
    environment = run_info.environment()
    while unit := next_unclaimed(units, args.results, args.epochs):
        name, group = unit
        try:
            run_group(name, group, data, args, environment)
        finally:
            for seed in group:
                release(log_path(args.results, name, seed))


def next_unclaimed(units, results: pathlib.Path, epochs: int):
    """The first unit left to do whose seeds this process could claim (it
    then holds them), or None. Seeds another process holds are left out."""
    for name, seeds in todo(units, results, epochs):
        claimed = []
        for seed in seeds:
            log = log_path(results, name, seed)
            if not claim(log):
                continue
            if is_complete(log, epochs):  # finished since todo() looked
                release(log)
            else:
                claimed.append(seed)
        if claimed:
            return name, claimed
    return None


def run_group(name, seeds, data, args, environment) -> None:
    """Trains one seed group of one optimizer, rewriting its logs every epoch."""
    logs = {
        seed: {
            "optimizer": name,
            "description": OPTIMIZERS[name][1],
            "seed": seed,
            "epochs_planned": args.epochs,
            "protocol": PROTOCOL,
            "seeds_in_program": seeds,
            "config": {
                **data.sizes,
                "split_seed": imdb_data.SPLIT_SEED,
                "batch_size": imdb_train.BATCH_SIZE,
            },
            "environment": environment,
            "device": run_info.device(),
            "started": now(),
            "epochs": [],
        }
        for seed in seeds
    }
    run_start = time.perf_counter()

    def save_epoch(records):
        for record in records:
            log = logs[record["seed"]]
            log["epochs"].append(record)
            log["wall_seconds"] = time.perf_counter() - run_start
            log["updated"] = now()
            write_json(log_path(args.results, name, record["seed"]), log)
        print(
            f"{now()} {name} epoch {records[0]['epoch']}, {records[0]['seconds']:.1f}"
            f" s for {len(records)} seed(s); validation / test acc: "
            + ", ".join(
                f"seed {r['seed']} {r['validation_accuracy']:.4f} /"
                f" {r['test_accuracy']:.4f}"
                for r in records
            ),
            flush=True,
        )

    imdb_train.train_seeds(
        name,
        seeds,
        data,
        args.epochs,
        vmap=True,
        progress=False,
        on_epoch=save_epoch,
        step_timing=not args.no_step_timing,
    )


if __name__ == "__main__":
    main()
