r"""Lookahead on the noisy quadratic model: simulation against closed forms.

The Lookahead paper (section 3.1 and appendix) studies the loss

    L(x) = 1/2 sum_i h_i (x_i - c_i)^2,   c_i ~ N(0, sigma_i^2), new every step,

and shows that at the same learning rate Lookahead's slow weights settle with
a smaller variance than SGD's iterates. This script derives the fixed points,
simulates many independent chains of ``optax.sgd`` and of this library's
``lookahead(optax.sgd)`` (``jax.vmap`` over chains), and compares.

Derivation, for one coordinate (drop the index i; write g = lr * h, a = 1 - g):

SGD. The gradient is h (x - c), so ``x' = a x + g c``. With c independent of x,
``E x' = a E x`` (the mean decays to 0 when |a| < 1, i.e. 0 < lr h < 2) and
``V' = a^2 V + g^2 sigma^2``, whose fixed point is

    V_sgd = g^2 sigma^2 / (1 - a^2).

Lookahead (k inner SGD steps from the slow weights phi, then
``phi' = phi + alpha (theta_k - phi)``). Unrolling the inner steps,

    theta_k = a^k phi + g sum_{j<k} a^(k-1-j) c_j,

so ``phi' = b phi + alpha g sum_{j<k} a^(k-1-j) c_j`` with
``b = 1 - alpha (1 - a^k)``. The noise terms are independent of phi and of each
other, with total variance ``alpha^2 g^2 sigma^2 (1 - a^(2k)) / (1 - a^2)
= alpha^2 (1 - a^(2k)) V_sgd``. The fixed point of ``V' = b^2 V + that`` is

    V_la = alpha^2 (1 - a^(2k)) V_sgd / (1 - b^2),

and since ``1 - b^2 = (1 - a^k) (2 alpha - alpha^2 (1 - a^k))``, this is the
paper's Proposition:

    V_la / V_sgd = alpha^2 (1 - a^(2k))
                   / (alpha^2 (1 - a^(2k)) + 2 alpha (1 - alpha) (1 - a^k)),

which is below 1 whenever 0 < alpha < 1 and |a| < 1: the slow weights are
less noisy than SGD at the same learning rate (alpha = 1 gives back V_sgd).

The fast weights start each period at phi and after j inner steps have
variance ``a^(2j) V_la + (1 - a^(2j)) V_sgd``; a step of the training loop
sees j = 0, ..., k - 1 equally often (the params equal the slow weights right
after a sync), so their time-averaged variance is the mean of those k terms.

The expected loss at a point distributed with mean 0 and variances V_i is
``E L = 1/2 sum_i h_i (V_i + sigma_i^2)``; the table reports the excess over
the irreducible ``1/2 sum_i h_i sigma_i^2``.

Setup: 10 coordinates with h_i = 1 / i and sigma_i^2 = 1 / h_i (so the
gradient noise covariance is H, as in the noisy quadratic model literature),
k = 5, alpha = 0.5, learning rates 0.05 to 1.9 (SGD is stable for lr < 2 / h_max
= 2). Every chain starts at x = 0, runs a burn-in, then the second moments are
averaged over time and over chains.

Writes ``nqm.json`` and ``nqm.png`` to ``--out`` (default ``results/nqm``).

Run: python -m optax_lookahead_experiments.noisy_quadratic
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

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIM = 10
CURVATURE = 1.0 / np.arange(1, DIM + 1)
NOISE_VARIANCE = 1.0 / CURVATURE
LEARNING_RATES = [0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 1.9]
SYNC_PERIOD, SLOW_STEP_SIZE = 5, 0.5
CHAINS, BURN_IN, STEPS = 4096, 2000, 10000


def sgd_variance(lr, h, sigma2):
    """Stationary variance of SGD's iterate on one coordinate."""
    g = lr * h
    return g**2 * sigma2 / (1 - (1 - g) ** 2)


def lookahead_variances(lr, h, sigma2, k=SYNC_PERIOD, alpha=SLOW_STEP_SIZE):
    """Stationary variances of the slow weights and time-averaged fast weights."""
    a = 1 - lr * h
    v_sgd = sgd_variance(lr, h, sigma2)
    v_slow = (
        alpha**2
        * (1 - a ** (2 * k))
        / (alpha**2 * (1 - a ** (2 * k)) + 2 * alpha * (1 - alpha) * (1 - a**k))
        * v_sgd
    )
    v_fast = np.mean(
        [a ** (2 * j) * v_slow + (1 - a ** (2 * j)) * v_sgd for j in range(k)], axis=0
    )
    return v_slow, v_fast


def simulate(tx, key, chains: int, burn_in: int, steps: int):
    """Per-chain time averages of x^2 (params, and slow weights if any).

    Returns NumPy arrays ``(chains, DIM)``; the second is None without lookahead.
    """
    h = jnp.asarray(CURVATURE, jnp.float32)
    sigma = jnp.asarray(np.sqrt(NOISE_VARIANCE), jnp.float32)
    has_slow = _has_slow(tx)

    def step(x, state, c):
        updates, state = tx.update(h * (x - c), state, x)
        return optax.apply_updates(x, updates), state

    chain_step = jax.vmap(step)  # each chain has its own params, state and noise

    def advance(carry, key):
        x, state, sums = carry
        c = sigma * jax.random.normal(key, (chains, DIM))
        x, state = chain_step(x, state, c)
        slow = slow_params(state) if has_slow else x
        return (x, state, (sums[0] + x**2, sums[1] + slow**2)), None

    @jax.jit
    def run(key):
        x = jnp.zeros((chains, DIM))
        state = jax.vmap(tx.init)(x)
        zeros = jnp.zeros((chains, DIM))
        burn_key, key = jax.random.split(key)
        carry = (x, state, (zeros, zeros))
        carry, _ = jax.lax.scan(advance, carry, jax.random.split(burn_key, burn_in))
        x, state, _ = carry
        (_, _, sums), _ = jax.lax.scan(
            advance, (x, state, (zeros, zeros)), jax.random.split(key, steps)
        )
        return sums[0] / steps, sums[1] / steps

    fast, slow = (np.asarray(m, np.float64) for m in jax.device_get(run(key)))
    return fast, slow if has_slow else None


def _has_slow(tx) -> bool:
    return slow_params(tx.init(jnp.zeros(DIM)), default=None) is not None


def excess_loss(variances):
    """``1/2 sum_i h_i V_i``: the expected loss above its irreducible part."""
    return 0.5 * float(np.sum(CURVATURE * variances))


def experiment(chains: int, burn_in: int, steps: int) -> dict:
    start = time.perf_counter()
    rows = []
    for i, lr in enumerate(LEARNING_RATES):
        key_sgd, key_la = jax.random.split(jax.random.key(i))
        sgd_moment, _ = simulate(optax.sgd(lr), key_sgd, chains, burn_in, steps)
        tx = lookahead(optax.sgd(lr), SYNC_PERIOD, SLOW_STEP_SIZE)
        fast_moment, slow_moment = simulate(tx, key_la, chains, burn_in, steps)
        theory_slow, theory_fast = lookahead_variances(lr, CURVATURE, NOISE_VARIANCE)
        theory_sgd = sgd_variance(lr, CURVATURE, NOISE_VARIANCE)
        row = {"lr": lr}
        for name, moment, theory in [
            ("sgd", sgd_moment, theory_sgd),
            ("lookahead_slow", slow_moment, theory_slow),
            ("lookahead_fast", fast_moment, theory_fast),
        ]:
            # Chains are independent: the spread of their time averages gives
            # the standard error of the mean over chains.
            simulated = moment.mean(axis=0)
            stderr = moment.std(axis=0, ddof=1) / np.sqrt(chains)
            row[name] = {
                "variance_simulated": simulated.tolist(),
                "variance_stderr": stderr.tolist(),
                "variance_theory": np.asarray(theory).tolist(),
                "excess_loss_simulated": excess_loss(simulated),
                "excess_loss_theory": excess_loss(theory),
                "max_relative_error": float(np.max(np.abs(simulated / theory - 1))),
                "max_error_in_stderrs": float(
                    np.max(np.abs(simulated - theory) / stderr)
                ),
            }
        rows.append(row)
    return {
        "config": {
            "dim": DIM,
            "curvature": CURVATURE.tolist(),
            "noise_variance": NOISE_VARIANCE.tolist(),
            "sync_period": SYNC_PERIOD,
            "slow_step_size": SLOW_STEP_SIZE,
            "chains": chains,
            "burn_in_steps": burn_in,
            "measured_steps": steps,
            "irreducible_loss": 0.5 * float(np.sum(CURVATURE * NOISE_VARIANCE)),
        },
        "environment": run_info.environment(),
        "wall_seconds": time.perf_counter() - start,
        "rows": rows,
    }


def format_table(log: dict) -> str:
    """Excess expected loss, simulated vs closed form, and the worst error."""
    lines = [
        "| lr | SGD sim | SGD theory | LA slow sim | LA slow theory | LA fast sim"
        " | LA fast theory | slow/SGD (sim) | worst rel. err. | worst err. / s.e. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    parts = ("sgd", "lookahead_slow", "lookahead_fast")
    for row in log["rows"]:
        cells = [f"{row['lr']:g}"]
        for part in parts:
            cells += [
                f"{row[part]['excess_loss_simulated']:.4f}",
                f"{row[part]['excess_loss_theory']:.4f}",
            ]
        ratio = (
            row["lookahead_slow"]["excess_loss_simulated"]
            / row["sgd"]["excess_loss_simulated"]
        )
        cells.append(f"{ratio:.3f}")
        cells.append(f"{100 * max(row[p]['max_relative_error'] for p in parts):.1f}%")
        cells.append(f"{max(row[p]['max_error_in_stderrs'] for p in parts):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(log: dict, path) -> None:
    """Left: V_la / V_sgd against lr * h. Right: excess loss against lr."""
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    lr_h = np.geomspace(0.004, 1.95, 200)
    theory_slow, theory_fast = lookahead_variances(lr_h, 1.0, 1.0)
    left.plot(lr_h, theory_slow / sgd_variance(lr_h, 1.0, 1.0), label="slow, theory")
    left.plot(lr_h, theory_fast / sgd_variance(lr_h, 1.0, 1.0), label="fast, theory")
    for part, marker in (("lookahead_slow", "o"), ("lookahead_fast", "s")):
        xs, ys = [], []
        for row in log["rows"]:
            xs += list(row["lr"] * CURVATURE)
            ys += list(
                np.array(row[part]["variance_simulated"])
                / np.array(row["sgd"]["variance_simulated"])
            )
        label = f"{part.removeprefix('lookahead_')}, simulated"
        left.scatter(xs, ys, marker=marker, s=14, label=label, color="black")
    left.set_xscale("log")
    left.set_xlabel("lr * h")
    left.set_ylabel("variance / SGD's variance, same lr")
    left.set_title("stationary variance, lookahead vs SGD")

    lrs = [row["lr"] for row in log["rows"]]
    for part, label in (
        ("sgd", "SGD"),
        ("lookahead_slow", "lookahead slow"),
        ("lookahead_fast", "lookahead fast"),
    ):
        (line,) = right.plot(
            lrs, [row[part]["excess_loss_theory"] for row in log["rows"]], label=label
        )
        right.scatter(
            lrs,
            [row[part]["excess_loss_simulated"] for row in log["rows"]],
            color=line.get_color(),
            s=14,
        )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("learning rate")
    right.set_ylabel("expected loss - irreducible")
    right.set_title("lines: closed form, dots: simulation")
    k, alpha = log["config"]["sync_period"], log["config"]["slow_step_size"]
    fig.suptitle(f"noisy quadratic model, k={k}, alpha={alpha}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=CHAINS)
    parser.add_argument("--burn-in", type=int, default=BURN_IN)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "nqm")
    args = parser.parse_args(argv)
    if min(args.chains, args.steps) < 2 or args.burn_in < 0:
        parser.error("need --chains >= 2, --steps >= 2 and --burn-in >= 0")
    args.out.mkdir(parents=True, exist_ok=True)
    log = experiment(args.chains, args.burn_in, args.steps)
    (args.out / "nqm.json").write_text(json.dumps(log, indent=1) + "\n")
    plot(log, args.out / "nqm.png")
    print(format_table(log))
    print(f"{log['wall_seconds']:.0f} s; wrote nqm.json and nqm.png")


if __name__ == "__main__":
    main()
