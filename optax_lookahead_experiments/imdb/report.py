"""Tables and plots of IMDB runs, from their per-epoch records.

A record is one epoch of one run, as ``optax_lookahead_experiments.imdb.train``
returns it: a dict with ``optimizer``, ``seed``, ``epoch``, the accuracies
(``validation_accuracy``, ``test_accuracy``, ``held_out_accuracy``),
``train_loss``, ``seconds``, ``median_step_seconds``, ``steps``,
``seeds_in_program`` and ``stale_rows_per_step``. Logs of the first protocol
(``results/imdb_v1/``) hold only the held-out accuracy; the metrics that need
the validation and test halves are left out for them. Used by the demo, the
notebooks and ``optax_lookahead_experiments.make_results``.
"""

import collections
import statistics

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no display, no global state
from matplotlib.ticker import MaxNLocator

# The LazyOptimizer post's single runs: best validation accuracy over 15 epochs.
SEED_CLAIM = {"adam": 0.837, "lazy": 0.849}
LAST = 5  # epochs averaged by the "last 5" metric

# Per-run metrics: name -> (short column title, description).
METRICS = {
    "test_at_chosen": (
        "test @ val-chosen epoch",
        "accuracy on the test half at the epoch of best accuracy on the"
        " validation half (the first among ties): protocol-clean",
    ),
    "test_last5": (
        f"test, mean of last {LAST}",
        f"mean accuracy on the test half over the last {LAST} epochs",
    ),
    "best_held_out": (
        "best held-out (biased)",
        "the seed's metric: the maximum over the epochs of the accuracy on the"
        " whole held-out set, chosen on the set it reports, so biased upward,"
        " most for optimizers that peak early",
    ),
    "final_held_out": (
        "final held-out",
        "accuracy on the whole held-out set after the last epoch",
    ),
}


def by_run(records: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """Groups records as ``{optimizer: {seed: [epoch records, by epoch]}}``."""
    runs = collections.defaultdict(dict)
    for record in records:
        runs[record["optimizer"]].setdefault(record["seed"], []).append(record)
    for seeds in runs.values():
        for epochs in seeds.values():
            epochs.sort(key=lambda r: r["epoch"])
    return dict(runs)


def run_metrics(epochs: list[dict]) -> dict[str, float]:
    """The :data:`METRICS` of one run (its records, by epoch), as fractions.

    Also ``chosen_epoch`` (the validation-chosen epoch) and ``best_epoch`` (of
    the best held-out accuracy). Metrics a record lacks are left out.
    """
    held_out = [r["held_out_accuracy"] for r in epochs]
    best = int(np.argmax(held_out))  # the first epoch among ties
    metrics = {
        "best_held_out": held_out[best],
        "best_epoch": epochs[best]["epoch"],
        "final_held_out": held_out[-1],
    }
    if all("validation_accuracy" in r for r in epochs):
        chosen = int(np.argmax([r["validation_accuracy"] for r in epochs]))
        test = [r["test_accuracy"] for r in epochs]
        metrics |= {
            "test_at_chosen": test[chosen],
            "chosen_epoch": epochs[chosen]["epoch"],
            "test_last5": float(np.mean(test[-LAST:])),
        }
    return metrics


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

    Per seed, :func:`run_metrics`; then, per metric, their mean and sample
    standard deviation over the seeds (``<metric>_mean_std``). Epoch time is
    the median over all epochs of the wall time per run (a program training
    several seeds at once counts its time divided among them), and of steps
    times the median step time (not inflated by pauses or by the first
    epoch's compile).
    """
    rows = []
    for optimizer, seeds in by_run(records).items():
        per_seed = {seed: run_metrics(epochs) for seed, epochs in seeds.items()}
        epochs = [r for run in seeds.values() for r in run]
        row = {
            "optimizer": optimizer,
            "seeds": sorted(seeds),
            "epochs": {seed: len(run) for seed, run in seeds.items()},
            "epoch_seconds": statistics.median(
                r["seconds"] / r.get("seeds_in_program", 1) for r in epochs
            ),
            "step_epoch_seconds": statistics.median(
                r["median_step_seconds"] * r["steps"] / r.get("seeds_in_program", 1)
                for r in epochs
            ),
            "stale_rows_per_step": statistics.fmean(
                run[-1]["stale_rows_per_step"] for run in seeds.values()
            ),
            "first_epoch_held_out": statistics.fmean(
                run[0]["held_out_accuracy"] for run in seeds.values()
            ),
        }
        names = [*METRICS, "best_epoch", "chosen_epoch"]
        for name in names:
            values = {s: m[name] for s, m in per_seed.items() if name in m}
            if len(values) == len(per_seed):
                row[name] = values
                row[f"{name}_mean_std"] = mean_std(list(values.values()))
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`summarize`'s rows; accuracies in percent.

    Mean ± sample standard deviation over seeds.
    """
    metrics = [m for m in METRICS if all(m in row for row in rows)]
    lines = [
        "| optimizer | seeds | "
        + " | ".join(f"{METRICS[m][0]} %" for m in metrics)
        + " | best held-out epoch | s/epoch-run (wall) | s/epoch-run (steps)"
        " | stale rows/step |",
        "|---|---|" + "---|" * len(metrics) + "---|---|---|---|",
    ]
    for row in rows:
        n = len(row["seeds"])
        cells = [format_mean_std(*row[f"{m}_mean_std"], n, scale=100) for m in metrics]
        best_epochs = ", ".join(str(row["best_epoch"][s]) for s in row["seeds"])
        lines.append(
            f"| {row['optimizer']} | {n} | "
            + " | ".join(cells)
            + f" | {best_epochs} | {row['epoch_seconds']:.1f}"
            f" | {row['step_epoch_seconds']:.1f}"
            f" | {row['stale_rows_per_step']:.0f} |"
        )
    return "\n".join(lines)


def _curves(seeds: dict[int, list[dict]], key: str) -> np.ndarray:
    """``(seeds, epochs)`` of ``key``, over the epochs every seed has reached."""
    length = min(len(run) for run in seeds.values())
    return np.array([[r[key] for r in run[:length]] for run in seeds.values()])


def plot_accuracy(
    records: list[dict],
    path,
    title: str,
    key: str = "held_out_accuracy",
    references: bool = False,
) -> None:
    """Accuracy per epoch: the mean over seeds, the range shaded.

    With ``references``, dotted lines at the seed's reported best accuracies
    (Adam 83.7 %, lazy 84.9 %).
    """
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for optimizer, seeds in by_run(records).items():
        curves = _curves(seeds, key)
        epochs = np.arange(1, curves.shape[1] + 1)
        label = f"{optimizer} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        (line,) = ax.plot(epochs, 100 * curves.mean(axis=0), marker="o", label=label)
        if len(seeds) > 1:
            ax.fill_between(
                epochs,
                100 * curves.min(axis=0),
                100 * curves.max(axis=0),
                color=line.get_color(),
                alpha=0.12,
            )
    if references:
        _reference_lines(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{key.replace('_', ' ')} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _reference_lines(ax) -> None:
    for name, value in SEED_CLAIM.items():
        ax.axhline(100 * value, color="k", lw=0.8, ls=":")
        ax.annotate(
            f"seed's {name}: {100 * value:.1f} (best)",
            (0.01, 100 * value),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="bottom",
        )


def paired_curves(
    records: list[dict], name: str, baseline: str, key: str
) -> tuple[list[int], np.ndarray]:
    """``name - baseline`` of ``key`` per seed and epoch, on the shared seeds.

    Returns the seeds and a ``(seeds, epochs)`` array over the epochs that
    all of them have reached in both runs.
    """
    runs = by_run(records)
    if name not in runs or baseline not in runs:
        return [], np.zeros((0, 0))
    seeds = sorted(set(runs[name]) & set(runs[baseline]))
    if not seeds:
        return [], np.zeros((0, 0))
    pairs = {s: (runs[name][s], runs[baseline][s]) for s in seeds}
    length = min(min(len(a), len(b)) for a, b in pairs.values())
    diffs = np.array(
        [
            [a[e][key] - b[e][key] for e in range(length)]
            for a, b in (pairs[s] for s in seeds)
        ]
    )
    return seeds, diffs


def plot_paired(
    records: list[dict],
    comparisons: list[tuple[str, str]],
    path,
    key: str = "test_accuracy",
    title: str = "",
) -> bool:
    """Accuracy by epoch, then one panel per comparison of paired differences.

    The first panel is the mean accuracy per epoch of every optimizer in the
    comparisons, with the seed's reported best accuracies as dotted lines.
    Each other panel shows ``name - baseline`` per seed (thin lines) and
    their mean (thick), with a t-based 95 % interval of the mean shaded and
    the seed's reported difference (+1.2 points, lazy - Adam, on best
    accuracy) dotted. Draws nothing and returns False when no comparison has
    a pair yet.
    """
    from optax_lookahead_experiments.stats import t_interval  # scipy only where plotted

    comparisons = [
        c for c in comparisons if len(paired_curves(records, *c, key)[0]) > 0
    ]
    if not comparisons:
        return False
    panels = 1 + len(comparisons)
    fig = Figure(figsize=(4.2 * panels, 3.8))
    axes = np.atleast_1d(fig.subplots(1, panels, sharex=True))
    names = list(dict.fromkeys(n for c in comparisons for n in c))
    runs = by_run(records)
    for i, optimizer in enumerate(names):
        curves = _curves(runs[optimizer], key)
        epochs = np.arange(1, curves.shape[1] + 1)
        axes[0].plot(
            epochs,
            100 * curves.mean(axis=0),
            marker="o",
            ms=3,
            color=f"C{i}",
            label=f"{optimizer} ({len(curves)})",
        )
    _reference_lines(axes[0])
    axes[0].set(
        xlabel="epoch",
        ylabel=f"{key.replace('_', ' ')} (%)",
        title="mean over seeds",
    )
    axes[0].legend(fontsize=7)
    claim = 100 * (SEED_CLAIM["lazy"] - SEED_CLAIM["adam"])
    for ax, (name, baseline) in zip(axes[1:], comparisons, strict=True):
        seeds, diffs = paired_curves(records, name, baseline, key)
        diffs = 100 * diffs
        epochs = np.arange(1, diffs.shape[1] + 1)
        for row in diffs:
            ax.plot(epochs, row, color="0.6", lw=0.7)
        mean = diffs.mean(axis=0)
        ax.plot(epochs, mean, color="C3", lw=2, label=f"mean, {len(seeds)} seeds")
        if len(seeds) > 1:
            low, high = np.array([t_interval(column) for column in diffs.T]).T
            ax.fill_between(epochs, low, high, color="C3", alpha=0.2, label="95 % CI")
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(
            claim,
            color="k",
            lw=0.8,
            ls=":",
            label=f"seed: +{claim:.1f} (its best acc.)",
        )
        ax.set(xlabel="epoch", ylabel="points", title=f"{name} - {baseline}")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
