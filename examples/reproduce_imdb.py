"""Reproduces the LazyOptimizer IMDB experiment: 15 epochs x 3 seeds, 6 optimizers.

Writes one small JSON log per run, ``<optimizer>-seed<seed>.json`` under
``results/imdb/``, rewritten after every epoch. A run whose log holds all its
epochs is skipped, so the script can be stopped and started again and goes on
where it left off (an unfinished run restarts from its first epoch). Runs go
seed by seed, all optimizers for one seed before the next seed, so partial
results compare the optimizers on the same seeds.

Run (3.6 hours in all on a 2-core CPU, as measured in RESULTS.md;
``results/make_results.py`` then writes RESULTS.md from the logs):

    nice -n 10 python examples/reproduce_imdb.py > out/reproduce_imdb.log 2>&1 &

Pausing the process (SIGSTOP, SIGCONT) is harmless: the logs keep each epoch's
median step time, which a pause does not inflate, beside its wall time.
"""

import argparse
import datetime
import json
import os
import pathlib
import time

import imdb_data
import imdb_train
import run_info
from imdb_lazy import optimizer_name, positive_int
from imdb_optimizers import OPTIMIZERS

ROOT = pathlib.Path(__file__).resolve().parent.parent
EPOCHS = 15
SEEDS = (0, 1, 2)


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
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument(
        "--optimizers", type=optimizer_name, nargs="+", default=list(OPTIMIZERS)
    )
    parser.add_argument(
        "--results", type=pathlib.Path, default=ROOT / "results" / "imdb"
    )
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)

    todo = [
        (seed, name)
        for seed in dict.fromkeys(args.seeds)
        for name in dict.fromkeys(args.optimizers)
        if not is_complete(log_path(args.results, name, seed), args.epochs)
    ]
    print(f"{len(todo)} runs to do: {todo}", flush=True)
    if not todo:
        return
    data = imdb_train.prepare()
    print(f"data: {data.sizes}", flush=True)
    environment = run_info.environment()
    for seed, name in todo:
        path = log_path(args.results, name, seed)
        run(name, seed, data, args.epochs, path, environment)


def run(name, seed, data, epochs, path, environment) -> None:
    """Trains one run, rewriting its log at ``path`` after every epoch."""
    log = {
        "optimizer": name,
        "description": OPTIMIZERS[name][1],
        "seed": seed,
        "epochs_planned": epochs,
        "config": {
            **data.sizes,
            "split_seed": imdb_data.SPLIT_SEED,
            "batch_size": imdb_train.BATCH_SIZE,
        },
        "environment": environment,
        "started": now(),
        "epochs": [],
    }
    run_start = time.perf_counter()

    def save_epoch(record):
        log["epochs"].append(record)
        log["wall_seconds"] = time.perf_counter() - run_start
        log["updated"] = now()
        write_json(path, log)
        print(
            f"{name} seed {seed} epoch {record['epoch']}:"
            f" held-out acc {record['held_out_accuracy']:.4f},"
            f" {record['seconds']:.1f} s",
            flush=True,
        )

    imdb_train.train_run(name, seed, data, epochs, progress=False, on_epoch=save_epoch)


if __name__ == "__main__":
    main()
