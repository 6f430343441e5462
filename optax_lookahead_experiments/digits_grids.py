"""Lookahead's robustness beyond the learning rate, on digits: two more grids.

The setting of ``optax_lookahead_experiments.digits_lr_sweep`` (MLP on
scikit-learn's digits, 20 epochs, batch 32, 5 seeds, lookahead evaluated on the
slow weights):

- ``kalpha``: the paper's claim that Lookahead is robust to its own
  hyperparameters, a grid of sync periods k and slow step sizes alpha around
  the defaults (k = 5, alpha = 0.5), for Adam and SGD at a learning rate near
  their best and at a high one. alpha = 1 is the inner optimizer alone.
- ``sgd_edge``: a finer SGD learning-rate grid between 1 and 3, where plain
  SGD stops training in the coarse sweep, with and without lookahead.

Each grid writes ``<grid>.json`` (and ``<grid>.png``) under ``--out`` (default
``results/digits``); a grid whose log exists is skipped unless ``--force``,
so a stopped run goes on with the grids left.

Run (``--grids kalpha sgd_edge`` picks grids):

    nice -n 19 python -m optax_lookahead_experiments.digits_grids
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from optax_lookahead_experiments import run_info
from optax_lookahead_experiments.digits_lr_sweep import (
    BATCH_SIZE,
    EPOCHS,
    SEEDS,
    SPLIT_SEED,
    load_split,
    make_sweep,
    summary,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYNC_PERIODS = (2, 5, 10, 20)
SLOW_STEP_SIZES = (0.2, 0.5, 0.8, 1.0)
# Per inner optimizer: a learning rate near its best, and a high one.
KALPHA_LRS = {"adam": (3e-3, 3e-2), "sgd": (0.3, 1.0)}
SGD_EDGE_LRS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0)


def _runs(name, lrs, seeds, accuracy, loss, train_loss, **extra) -> list[dict]:
    return [
        {
            "optimizer": name,
            "lr": lr,
            "seed": seed,
            **extra,
            "test_accuracy": accuracy[i, seed].tolist(),
            "test_loss": loss[i, seed].tolist(),
            "final_train_loss": float(train_loss[i, seed]),
        }
        for i, lr in enumerate(lrs)
        for seed in range(seeds)
    ]


def _config(epochs: int, seeds: int, **extra) -> dict:
    return {
        "data": "sklearn load_digits, pixels / 16",
        "split_seed": SPLIT_SEED,
        "model": "MLP 64 -> 128 ReLU -> 10",
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "seeds": list(range(seeds)),
        **extra,
    }


def _split():
    """The fixed digits split, in the order ``make_sweep`` takes it."""
    x_train, x_test, y_train, y_test = load_split()
    return x_train, y_train, x_test, y_test


def kalpha_grid(epochs: int, seeds: int) -> dict:
    """Final test metrics over k x alpha, per inner optimizer and lr."""
    split = _split()
    start = time.perf_counter()
    runs = []
    for inner, lrs in KALPHA_LRS.items():
        for k in SYNC_PERIODS:
            for alpha in SLOW_STEP_SIZES:
                run = make_sweep(f"lookahead_{inner}", *split, epochs, k, alpha)
                out = jax.device_get(
                    run(jnp.asarray(lrs, jnp.float32), jnp.arange(seeds))
                )
                runs += _runs(
                    f"lookahead_{inner}",
                    lrs,
                    seeds,
                    *out,
                    sync_period=k,
                    slow_step_size=alpha,
                )
    return {
        "config": _config(
            epochs,
            seeds,
            sync_periods=list(SYNC_PERIODS),
            slow_step_sizes=list(SLOW_STEP_SIZES),
            learning_rates={k: list(v) for k, v in KALPHA_LRS.items()},
        ),
        "environment": run_info.environment(),
        "wall_seconds": time.perf_counter() - start,
        "runs": runs,
    }


def sgd_edge(epochs: int, seeds: int) -> dict:
    """SGD and lookahead(SGD) at learning rates between 1 and 3."""
    split = _split()
    start = time.perf_counter()
    runs = []
    for name in ("sgd", "lookahead_sgd"):
        run = make_sweep(name, *split, epochs)
        out = jax.device_get(
            run(jnp.asarray(SGD_EDGE_LRS, jnp.float32), jnp.arange(seeds))
        )
        runs += _runs(name, SGD_EDGE_LRS, seeds, *out)
    return {
        "config": _config(
            epochs,
            seeds,
            learning_rates=list(SGD_EDGE_LRS),
            sync_period=5,
            slow_step_size=0.5,
        ),
        "environment": run_info.environment(),
        "wall_seconds": time.perf_counter() - start,
        "runs": runs,
    }


def _final(runs: list[dict]) -> tuple[float, float]:
    accuracy = np.array([r["test_accuracy"][-1] for r in runs])
    return float(accuracy.mean()), float(accuracy.std(ddof=1))


def format_kalpha(log: dict) -> str:
    """Per inner optimizer and lr, a k x alpha table of final test accuracy."""
    config = log["config"]
    lines = []
    for inner, lrs in config["learning_rates"].items():
        for lr in lrs:
            lines += [
                f"lookahead({inner}, lr {lr:g}): final test accuracy %, mean ±"
                " std over seeds (alpha = 1: the inner optimizer alone)",
                "",
                "| k \\ alpha | "
                + " | ".join(f"{a:g}" for a in config["slow_step_sizes"])
                + " |",
                "|---|" + "---|" * len(config["slow_step_sizes"]),
            ]
            for k in config["sync_periods"]:
                cells = []
                for alpha in config["slow_step_sizes"]:
                    mine = [
                        r
                        for r in log["runs"]
                        if r["optimizer"] == f"lookahead_{inner}"
                        and r["lr"] == lr
                        and r["sync_period"] == k
                        and r["slow_step_size"] == alpha
                    ]
                    mean, std = _final(mine)
                    cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip()


def format_sgd_edge(log: dict) -> str:
    """Rows: learning rates; columns: SGD and lookahead(SGD)."""
    rows = {(r["optimizer"], r["lr"]): r for r in summary(log)}

    def cell(r):
        accuracy = f"{100 * r['accuracy'][0]:.1f} ± {100 * r['accuracy'][1]:.1f}"
        loss = (
            "diverged"
            if r["diverged"] == r["seeds"]
            else f"{r['loss'][0]:.3f} ± {r['loss'][1]:.3f}"
            + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
        )
        return f"{accuracy} | {loss}"

    lines = [
        "| sgd lr | sgd acc % | sgd loss | lookahead(sgd) acc % |"
        " lookahead(sgd) loss |",
        "|---|---|---|---|---|",
    ]
    for lr in log["config"]["learning_rates"]:
        plain, wrapped = rows[("sgd", lr)], rows[("lookahead_sgd", lr)]
        lines.append(f"| {lr:g} | {cell(plain)} | {cell(wrapped)} |")
    return "\n".join(lines)


def plot_kalpha(log: dict, path) -> None:
    """One heat map of mean final test accuracy per inner optimizer and lr."""
    config = log["config"]
    panels = [(i, lr) for i, lrs in config["learning_rates"].items() for lr in lrs]
    fig = Figure(figsize=(3.2 * len(panels), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    ks, alphas = config["sync_periods"], config["slow_step_sizes"]
    for ax, (inner, lr) in zip(axes, panels, strict=True):
        grid = np.array(
            [
                [
                    100
                    * _final(
                        [
                            r
                            for r in log["runs"]
                            if (r["optimizer"], r["lr"]) == (f"lookahead_{inner}", lr)
                            and (r["sync_period"], r["slow_step_size"]) == (k, a)
                        ]
                    )[0]
                    for a in alphas
                ]
                for k in ks
            ]
        )
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        for (row, column), value in np.ndenumerate(grid):
            ax.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        ax.set(xlabel="alpha", ylabel="k", title=f"{inner}, lr {lr:g}")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle("digits: final test accuracy (%) of lookahead, mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_sgd_edge(log: dict, path) -> None:
    rows = summary(log)
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for name in ("sgd", "lookahead_sgd"):
        mine = [r for r in rows if r["optimizer"] == name]
        ax.errorbar(
            [r["lr"] for r in mine],
            [100 * r["accuracy"][0] for r in mine],
            yerr=[100 * r["accuracy"][1] for r in mine],
            marker="o",
            capsize=3,
            label=name.replace("_", "(") + (")" if "_" in name else ""),
        )
    ax.set(xlabel="SGD learning rate", ylabel="final test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


GRIDS = {
    "kalpha": (kalpha_grid, plot_kalpha, format_kalpha),
    "sgd_edge": (sgd_edge, plot_sgd_edge, format_sgd_edge),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", nargs="+", choices=list(GRIDS), default=list(GRIDS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seeds", type=int, default=SEEDS, help="number of seeds")
    parser.add_argument("--force", action="store_true", help="rerun finished grids")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "digits")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.seeds < 2:
        parser.error("need --epochs >= 1 and --seeds >= 2 (for a spread)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.grids:
        path = args.out / f"{name}.json"
        if path.exists() and not args.force:
            print(f"{name}: {path} exists, skipped (--force reruns it)")
            continue
        run, plot, table = GRIDS[name]
        log = run(args.epochs, args.seeds)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(log, indent=1) + "\n")
        temporary.replace(path)
        plot(log, args.out / f"{name}.png")
        print(table(log))
        print(f"{name}: {log['wall_seconds']:.0f} s; wrote {path.name}", flush=True)


if __name__ == "__main__":
    main()
