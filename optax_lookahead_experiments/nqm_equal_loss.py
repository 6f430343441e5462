r"""The noisy quadratic model at equal final loss: who gets there first?

``optax_lookahead_experiments.noisy_quadratic`` compares SGD and Lookahead at the *same*
learning rate, where Lookahead's slow weights settle at a lower loss. The
Lookahead paper also compares them at the same *final* loss: Lookahead then
runs at a larger learning rate, and the question is how fast each one gets
there. This script answers it from closed forms, checked by simulating the
library's ``lookahead(optax.sgd)``.

Same model (10 coordinates, h_i = 1/i, noise variance sigma_i^2 = 1/h_i), now
started away from the optimum, at x_i = m0_i = START * sigma_i. Per coordinate,
with g = lr h, a = 1 - g, the mean m and variance V of SGD's iterate follow

    m' = a m,    V' = a^2 V + g^2 sigma^2,

and those of Lookahead's slow weights, one sync period (k steps) at a time,

    m' = b m,    V' = b^2 V + alpha^2 g^2 sigma^2 (1 - a^(2k)) / (1 - a^2),

with b = 1 - alpha (1 - a^k) (``optax_lookahead_experiments.noisy_quadratic``
derives both).
The expected excess loss is 1/2 sum_i h_i (m_i^2 + V_i). For each SGD learning
rate, bisection finds the Lookahead learning rate whose slow weights settle at
the same excess loss; then both curves run from the same start, and the table
gives the steps each needs to come within a factor of 2 (and 1.1) of that
final loss. The simulation runs ``CHAINS`` chains of both from the start and
compares their mean excess loss with the closed form.

Writes ``equal_loss.json`` and ``equal_loss.png`` to ``--out`` (default
``results/nqm``).

Run: nice -n 19 python -m optax_lookahead_experiments.nqm_equal_loss
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from optax_lookahead import lookahead, slow_params
from optax_lookahead_experiments import run_info
from optax_lookahead_experiments.noisy_quadratic import (
    CURVATURE,
    NOISE_VARIANCE,
    SLOW_STEP_SIZE,
    SYNC_PERIOD,
    lookahead_variances,
    sgd_variance,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
START = 10.0  # the start, in noise standard deviations per coordinate
SGD_LEARNING_RATES = [0.1, 0.3, 0.5, 1.0, 1.5]
HORIZON = 3000  # steps of the closed-form curves
CHAINS = 2048
FACTORS = (2.0, 1.1)


def final_excess(lr: float, lookahead_: bool) -> float:
    """The stationary excess loss of SGD's iterate or of the slow weights."""
    if lookahead_:
        variances, _ = lookahead_variances(lr, CURVATURE, NOISE_VARIANCE)
    else:
        variances = sgd_variance(lr, CURVATURE, NOISE_VARIANCE)
    return 0.5 * float(np.sum(CURVATURE * variances))


def matching_lookahead_lr(target: float) -> float:
    """The lookahead lr whose slow weights settle at excess loss ``target``.

    The slow weights' stationary loss rises with the lr on (0, 2 / max h);
    bisection in log space.
    """
    low, high = 1e-6, 2.0 / CURVATURE.max() * (1 - 1e-9)
    for _ in range(200):
        middle = np.sqrt(low * high)
        if final_excess(middle, True) < target:
            low = middle
        else:
            high = middle
    return float(np.sqrt(low * high))


def sgd_curve(lr: float, steps: int) -> np.ndarray:
    """Expected excess loss of SGD after 0, 1, ..., steps steps."""
    h, sigma2 = CURVATURE, NOISE_VARIANCE
    a, g = 1 - lr * h, lr * h
    m, v = START * np.sqrt(sigma2), np.zeros_like(h)
    out = [0.5 * np.sum(h * (m**2 + v))]
    for _ in range(steps):
        m, v = a * m, a**2 * v + g**2 * sigma2
        out.append(0.5 * np.sum(h * (m**2 + v)))
    return np.array(out)


def lookahead_curve(
    lr: float, steps: int, k: int = SYNC_PERIOD, alpha: float = SLOW_STEP_SIZE
) -> np.ndarray:
    """Expected excess loss of the slow weights after 0, 1, ..., steps steps.

    The slow weights change only at a sync (every k-th step) and hold between.
    """
    h, sigma2 = CURVATURE, NOISE_VARIANCE
    a, g = 1 - lr * h, lr * h
    b = 1 - alpha * (1 - a**k)
    noise = alpha**2 * g**2 * sigma2 * (1 - a ** (2 * k)) / (1 - a**2)
    m, v = START * np.sqrt(sigma2), np.zeros_like(h)
    out = [0.5 * np.sum(h * (m**2 + v))]
    for t in range(1, steps + 1):
        if t % k == 0:
            m, v = b * m, b**2 * v + noise
        out.append(0.5 * np.sum(h * (m**2 + v)))
    return np.array(out)


def steps_to(curve: np.ndarray, level: float) -> int | None:
    """The first step from which the curve stays at or below ``level``."""
    above = np.flatnonzero(curve > level)
    if len(above) == 0:
        return 0
    first = int(above[-1]) + 1
    return first if first < len(curve) else None


def simulate(tx, key, chains: int, steps: int) -> np.ndarray:
    """Mean over chains of the excess loss of the evaluation weights, per step."""
    h = jnp.asarray(CURVATURE, jnp.float32)
    sigma = jnp.asarray(np.sqrt(NOISE_VARIANCE), jnp.float32)

    def step(x, state, c):
        updates, state = tx.update(h * (x - c), state, x)
        return optax.apply_updates(x, updates), state

    chain_step = jax.vmap(step)

    def advance(carry, key):
        x, state = carry
        c = sigma * jax.random.normal(key, (chains, h.shape[0]))
        x, state = chain_step(x, state, c)
        weights = slow_params(state, default=x)
        return (x, state), 0.5 * jnp.mean(jnp.sum(h * weights**2, axis=1))

    @jax.jit
    def run(key):
        x = jnp.broadcast_to(START * sigma, (chains, h.shape[0]))
        state = jax.vmap(tx.init)(x)
        _, losses = jax.lax.scan(advance, (x, state), jax.random.split(key, steps))
        return losses

    first = 0.5 * float(np.sum(CURVATURE * START**2 * NOISE_VARIANCE))
    return np.concatenate([[first], np.asarray(jax.device_get(run(key)), float)])


def experiment(chains: int, horizon: int) -> dict:
    start = time.perf_counter()
    # The curves are kept at about 300 log-spaced steps (the plot's x axis).
    kept = np.unique(np.geomspace(1, horizon, 300).astype(int))
    rows = []
    for i, lr in enumerate(SGD_LEARNING_RATES):
        target = final_excess(lr, False)
        la_lr = matching_lookahead_lr(target)
        curves = {
            "sgd": sgd_curve(lr, horizon),
            "lookahead": lookahead_curve(la_lr, horizon),
        }
        key_sgd, key_la = jax.random.split(jax.random.key(i))
        simulated = {
            "sgd": simulate(optax.sgd(lr), key_sgd, chains, horizon),
            "lookahead": simulate(
                lookahead(optax.sgd(la_lr), SYNC_PERIOD, SLOW_STEP_SIZE),
                key_la,
                chains,
                horizon,
            ),
        }
        row = {"sgd_lr": lr, "lookahead_lr": la_lr, "final_excess_loss": target}
        for name, curve in curves.items():
            row[name] = {
                "steps_to": {str(f): steps_to(curve, f * target) for f in FACTORS},
                "curve": curve[kept].tolist(),
                "simulated": simulated[name][kept].tolist(),
                # Worst relative disagreement of the simulated mean over the
                # second half of the horizon, where the loss is near its floor.
                "worst_relative_error_late": float(
                    np.max(
                        np.abs(simulated[name] - curve)[horizon // 2 :]
                        / curve[horizon // 2 :]
                    )
                ),
            }
        rows.append(row)
    return {
        "config": {
            "dim": len(CURVATURE),
            "start_in_sigmas": START,
            "sync_period": SYNC_PERIOD,
            "slow_step_size": SLOW_STEP_SIZE,
            "chains": chains,
            "horizon": horizon,
            "factors": list(FACTORS),
        },
        "steps": kept.tolist(),
        "environment": run_info.environment(),
        "wall_seconds": time.perf_counter() - start,
        "rows": rows,
    }


def format_table(log: dict) -> str:
    factors = log["config"]["factors"]
    head = " | ".join(
        f"steps to {f:g}x: SGD | steps to {f:g}x: lookahead" for f in factors
    )
    lines = [
        f"| SGD lr | lookahead lr | final excess loss | {head}"
        " | worst late sim. error (SGD, LA) |",
        "|---|---|---|" + "---|---|" * len(factors) + "---|",
    ]
    for row in log["rows"]:
        cells = []
        for f in factors:
            for name in ("sgd", "lookahead"):
                n = row[name]["steps_to"][str(f)]
                cells.append("> horizon" if n is None else f"{n:,}")
        lines.append(
            f"| {row['sgd_lr']:g} | {row['lookahead_lr']:.3f}"
            f" | {row['final_excess_loss']:.4f} | "
            + " | ".join(cells)
            + f" | {100 * row['sgd']['worst_relative_error_late']:.1f}%,"
            f" {100 * row['lookahead']['worst_relative_error_late']:.1f}% |"
        )
    return "\n".join(lines)


def plot(log: dict, path) -> None:
    rows = log["rows"]
    fig = Figure(figsize=(3.4 * len(rows), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(rows), sharey=True))
    for ax, row in zip(axes, rows, strict=True):
        for name, color in (("sgd", "0.4"), ("lookahead", "C1")):
            steps = log["steps"]
            ax.plot(steps, row[name]["simulated"], color=color, alpha=0.35, lw=0.8)
            lr = row["sgd_lr"] if name == "sgd" else row["lookahead_lr"]
            ax.plot(
                steps, row[name]["curve"], color=color, label=f"{name}, lr {lr:.3g}"
            )
        ax.axhline(row["final_excess_loss"], color="k", lw=0.7, ls=":")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="step",
            title=f"equal final loss {row['final_excess_loss']:.3g}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("expected excess loss (slow weights for LA)")
    fig.suptitle(
        "noisy quadratic: closed form (lines), simulation (faint)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=CHAINS)
    parser.add_argument("--horizon", type=int, default=HORIZON)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "nqm")
    args = parser.parse_args(argv)
    if args.chains < 2 or args.horizon < 2 * SYNC_PERIOD:
        parser.error(f"need --chains >= 2 and --horizon >= {2 * SYNC_PERIOD}")
    args.out.mkdir(parents=True, exist_ok=True)
    log = experiment(args.chains, args.horizon)
    (args.out / "equal_loss.json").write_text(json.dumps(log) + "\n")
    plot(log, args.out / "equal_loss.png")
    print(format_table(log))
    print(f"{log['wall_seconds']:.0f} s; wrote equal_loss.json and equal_loss.png")


if __name__ == "__main__":
    main()
