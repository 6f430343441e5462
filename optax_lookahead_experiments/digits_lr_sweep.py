"""Is Lookahead less sensitive to the inner learning rate? A sweep on digits.

The Lookahead paper claims robustness to the inner optimizer's learning rate.
This trains a small MLP (64 -> 128 ReLU -> 10) on scikit-learn's digits
(1,797 8x8 images, split 1,257 train / 540 test, stratified, fixed seed) for a
fixed number of epochs with Adam and SGD at learning rates spread over three
decades, up to where training breaks down, each alone and inside
``lookahead`` (k=5, alpha=0.5, evaluated on the slow weights), for several
seeds. The seed sets the initial weights and the
batch order; both optimizers of a pair see the same ones.

Every (learning rate, seed) pair of one optimizer trains at once, under
``jax.vmap``, in a single compiled program, so the whole sweep takes well
under a minute on 2 CPU cores.

Writes ``lr_sweep.json`` (final and per-epoch test accuracy and loss of every
run) and ``lr_sweep.png`` to ``--out`` (default ``results/digits``).

Run: python -m optax_lookahead_experiments.digits_lr_sweep
"""

import argparse
import json
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from optax_lookahead import lookahead, slow_params
from optax_lookahead_experiments import run_info

ROOT = pathlib.Path(__file__).resolve().parent.parent
INNER = {
    "adam": (optax.adam, [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]),
    "sgd": (optax.sgd, [1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]),
}
SYNC_PERIOD, SLOW_STEP_SIZE = 5, 0.5
EPOCHS, BATCH_SIZE, SEEDS = 20, 32, 5
SPLIT_SEED, TEST_SIZE = 0, 540


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(10)(x)


def load_split():
    """Digits scaled to [0, 1], split with a fixed seed, stratified by class."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(
        x,
        digits.target.astype(np.int32),
        test_size=TEST_SIZE,
        random_state=SPLIT_SEED,
        stratify=digits.target,
    )


def make_sweep(
    optimizer: str,
    x_train,
    y_train,
    x_test,
    y_test,
    epochs: int,
    sync_period: int = SYNC_PERIOD,
    slow_step_size: float = SLOW_STEP_SIZE,
):
    """A jitted function (learning rates, seeds) -> per-epoch test metrics.

    ``optimizer`` is ``"adam"``, ``"sgd"``, ``"lookahead_adam"`` or
    ``"lookahead_sgd"``; lookahead uses ``sync_period`` and ``slow_step_size``.
    Returns arrays ``(len(lrs), len(seeds), epochs)`` of test accuracy and test
    loss, and ``(len(lrs), len(seeds))`` of the last epoch's mean training
    loss.
    """
    model = MLP()
    inner = INNER[optimizer.removeprefix("lookahead_")][0]
    use_lookahead = optimizer.startswith("lookahead_")
    steps = len(y_train) // BATCH_SIZE  # the remainder is dropped each epoch
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def test_metrics(params):
        logits = model.apply({"params": params}, x_test)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_test)
        return jnp.mean(jnp.argmax(logits, -1) == y_test), loss.mean()

    def run(lr, seed):
        tx = inner(lr)  # a traced learning rate: one program for the whole sweep
        if use_lookahead:
            tx = lookahead(tx, sync_period, slow_step_size)
        init_key, order_key = jax.random.split(jax.random.key(seed))
        params = model.init(init_key, x_train[:1])["params"]
        state = tx.init(params)

        def train_step(carry, batch):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(
                params, x_train[batch], y_train[batch]
            )
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        def epoch(carry, key):
            order = jax.random.permutation(key, len(y_train))
            batches = order[: steps * BATCH_SIZE].reshape(steps, BATCH_SIZE)
            carry, losses = jax.lax.scan(train_step, carry, batches)
            params, state = carry
            eval_params = slow_params(state) if use_lookahead else params
            return carry, (*test_metrics(eval_params), losses.mean())

        keys = jax.random.split(order_key, epochs)
        _, (accuracy, loss, train_loss) = jax.lax.scan(epoch, (params, state), keys)
        return accuracy, loss, train_loss[-1]

    return jax.jit(jax.vmap(jax.vmap(run, (None, 0)), (0, None)))


def sweep(epochs: int, seeds: int) -> dict:
    x_train, x_test, y_train, y_test = load_split()
    runs = []
    start = time.perf_counter()
    for optimizer in ["adam", "lookahead_adam", "sgd", "lookahead_sgd"]:
        lrs = INNER[optimizer.removeprefix("lookahead_")][1]
        run = make_sweep(optimizer, x_train, y_train, x_test, y_test, epochs)
        accuracy, loss, train_loss = jax.device_get(
            run(jnp.asarray(lrs, jnp.float32), jnp.arange(seeds))
        )
        for i, lr in enumerate(lrs):
            for seed in range(seeds):
                runs.append(
                    {
                        "optimizer": optimizer,
                        "lr": lr,
                        "seed": seed,
                        "test_accuracy": accuracy[i, seed].tolist(),
                        "test_loss": loss[i, seed].tolist(),
                        "final_train_loss": float(train_loss[i, seed]),
                    }
                )
    return {
        "config": {
            "data": "sklearn load_digits, pixels / 16",
            "train_size": len(y_train),
            "test_size": len(y_test),
            "split_seed": SPLIT_SEED,
            "model": "MLP 64 -> 128 ReLU -> 10",
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "seeds": list(range(seeds)),
            "sync_period": SYNC_PERIOD,
            "slow_step_size": SLOW_STEP_SIZE,
            "learning_rates": {name: lrs for name, (_, lrs) in INNER.items()},
        },
        "environment": run_info.environment(),
        "wall_seconds": time.perf_counter() - start,
        "runs": runs,
    }


def summary(log: dict) -> list[dict]:
    """Mean and std over seeds of the final test accuracy and loss, per lr.

    A run diverged when its final test loss is not finite; the loss statistics
    are over the other runs (NaN if none), the accuracy ones over all runs.
    """
    groups = {}
    for run in log["runs"]:
        groups.setdefault((run["optimizer"], run["lr"]), []).append(run)
    rows = []
    for (optimizer, lr), runs in groups.items():
        accuracy = np.array([r["test_accuracy"][-1] for r in runs])
        loss = np.array([r["test_loss"][-1] for r in runs])
        finite = loss[np.isfinite(loss)]
        rows.append(
            {
                "optimizer": optimizer,
                "lr": lr,
                "seeds": len(runs),
                "accuracy": (accuracy.mean(), accuracy.std(ddof=1)),
                "loss": _mean_std(finite),
                "diverged": int(len(loss) - len(finite)),
            }
        )
    return rows


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def format_table(log: dict) -> str:
    """A Markdown table: rows are learning rates, columns inner vs lookahead."""
    rows = {(r["optimizer"], r["lr"]): r for r in summary(log)}

    def cell(r):
        accuracy = f"{100 * r['accuracy'][0]:.1f} ± {100 * r['accuracy'][1]:.1f}"
        if r["diverged"] == r["seeds"]:
            return f"{accuracy} | diverged"
        loss = f"{r['loss'][0]:.3f} ± {r['loss'][1]:.3f}"
        if r["diverged"]:
            loss += f" ({r['diverged']} of {r['seeds']} diverged)"
        return f"{accuracy} | {loss}"

    lines = []
    for inner, (_, lrs) in INNER.items():
        lines += [
            f"| {inner} lr | {inner} acc % | {inner} loss"
            f" | lookahead({inner}) acc % | lookahead({inner}) loss |",
            "|---|---|---|---|---|",
        ]
        for lr in lrs:
            plain, wrapped = rows[(inner, lr)], rows[(f"lookahead_{inner}", lr)]
            lines.append(f"| {lr:g} | {cell(plain)} | {cell(wrapped)} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(log: dict, path) -> None:
    """Final test accuracy and loss against the inner learning rate."""
    rows = summary(log)
    fig = Figure(figsize=(9, 6.5))
    axes = fig.subplots(2, 2, sharex="col")
    for column, inner in enumerate(INNER):
        for optimizer in (inner, f"lookahead_{inner}"):
            mine = [r for r in rows if r["optimizer"] == optimizer]
            lrs = [r["lr"] for r in mine]
            for row, metric in enumerate(("accuracy", "loss")):
                scale = 100 if metric == "accuracy" else 1
                axes[row, column].errorbar(
                    lrs,
                    [scale * r[metric][0] for r in mine],
                    yerr=[scale * r[metric][1] for r in mine],
                    marker="o",
                    capsize=3,
                    label=optimizer.replace("lookahead_", "lookahead "),
                )
        axes[0, column].set_title(f"inner optimizer: {inner}")
        axes[1, column].set_xlabel("inner learning rate")
        axes[1, column].set_xscale("log")
        axes[1, column].set_yscale("log")
    axes[0, 0].set_ylabel("final test accuracy (%)")
    axes[1, 0].set_ylabel("final test loss")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    config = log["config"]
    fig.suptitle(
        f"digits MLP, {config['epochs']} epochs, mean ± std over"
        f" {len(config['seeds'])} seeds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seeds", type=int, default=SEEDS, help="number of seeds")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "digits")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.seeds < 2:
        parser.error("need --epochs >= 1 and --seeds >= 2 (for a spread)")
    args.out.mkdir(parents=True, exist_ok=True)
    log = sweep(args.epochs, args.seeds)
    (args.out / "lr_sweep.json").write_text(json.dumps(log, indent=1) + "\n")
    plot(log, args.out / "lr_sweep.png")
    print(format_table(log))
    print(f"{log['wall_seconds']:.0f} s; wrote lr_sweep.json and lr_sweep.png")


if __name__ == "__main__":
    main()
