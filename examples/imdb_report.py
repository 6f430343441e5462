"""Tables and plots of IMDB runs, from their per-epoch records.

A record is one epoch of one run, as ``imdb_train.train_run`` returns it: a dict
with ``optimizer``, ``seed``, ``epoch``, ``held_out_accuracy``, ``seconds``,
``median_step_seconds``, ``steps`` and ``stale_rows_per_step``. Used by the demo
and by ``results/make_results.py``.
"""

import collections
import statistics

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no display, no global state
from matplotlib.ticker import MaxNLocator


def by_run(records: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """Groups records as ``{optimizer: {seed: [epoch records, by epoch]}}``."""
    runs = collections.defaultdict(dict)
    for record in records:
        runs[record["optimizer"]].setdefault(record["seed"], []).append(record)
    for seeds in runs.values():
        for epochs in seeds.values():
            epochs.sort(key=lambda r: r["epoch"])
    return dict(runs)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def format_mean_std(mean: float, std: float, count: int, scale: float = 1.0) -> str:
    """``mean ± std`` with two decimals; the mean alone for a single value."""
    if count < 2:
        return f"{scale * mean:.2f}"
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def summarize(records: list[dict]) -> list[dict]:
    """One row per optimizer, in order of first appearance.

    Per seed: the best held-out accuracy over the epochs, its epoch, and the
    final one; then their mean and standard deviation over the seeds. Epoch time
    is the median over all epochs of the wall time, and of steps times the
    median step time (not inflated by pauses or by the first epoch's compile).
    """
    rows = []
    for optimizer, seeds in by_run(records).items():
        best, best_epoch, final = {}, {}, {}
        for seed, epochs in seeds.items():
            accuracies = [r["held_out_accuracy"] for r in epochs]
            index = int(np.argmax(accuracies))  # the first epoch among ties
            best[seed], best_epoch[seed] = accuracies[index], epochs[index]["epoch"]
            final[seed] = accuracies[-1]
        epochs = [r for run in seeds.values() for r in run]
        rows.append(
            {
                "optimizer": optimizer,
                "seeds": sorted(seeds),
                "epochs": {seed: len(run) for seed, run in seeds.items()},
                "best": best,
                "best_epoch": best_epoch,
                "final": final,
                "best_mean_std": mean_std(list(best.values())),
                "final_mean_std": mean_std(list(final.values())),
                "epoch_seconds": statistics.median(r["seconds"] for r in epochs),
                "step_epoch_seconds": statistics.median(
                    r["median_step_seconds"] * r["steps"] for r in epochs
                ),
                "stale_rows_per_step": statistics.fmean(
                    run[-1]["stale_rows_per_step"] for run in seeds.values()
                ),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`summarize`'s rows; accuracies in percent."""
    lines = [
        "| optimizer | seeds | best acc % | best epoch | final acc % | s/epoch"
        " (wall) | s/epoch (steps) | stale rows/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        n = len(row["seeds"])
        best = format_mean_std(*row["best_mean_std"], n, scale=100)
        final = format_mean_std(*row["final_mean_std"], n, scale=100)
        best_epochs = ", ".join(str(row["best_epoch"][s]) for s in row["seeds"])
        lines.append(
            f"| {row['optimizer']} | {n} | {best} | {best_epochs} | {final}"
            f" | {row['epoch_seconds']:.1f} | {row['step_epoch_seconds']:.1f}"
            f" | {row['stale_rows_per_step']:.0f} |"
        )
    return "\n".join(lines)


def plot_accuracy(records: list[dict], path, title: str) -> None:
    """Held-out accuracy per epoch: the mean over seeds, the range shaded."""
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    for optimizer, seeds in by_run(records).items():
        # Only the epochs that every seed has reached, so the mean is fair.
        length = min(len(run) for run in seeds.values())
        curves = np.array(
            [[r["held_out_accuracy"] for r in run[:length]] for run in seeds.values()]
        )
        epochs = np.arange(1, length + 1)
        label = f"{optimizer} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        (line,) = ax.plot(epochs, 100 * curves.mean(axis=0), marker="o", label=label)
        if len(seeds) > 1:
            ax.fill_between(
                epochs,
                100 * curves.min(axis=0),
                100 * curves.max(axis=0),
                color=line.get_color(),
                alpha=0.15,
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
