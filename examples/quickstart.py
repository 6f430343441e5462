"""A small, complete run: a bag-of-words classifier with an embedding table.

Trains the same model with optax.adam, lazy_mask(adam) and
lookahead(lazy_mask(adam)) on synthetic sentences
(``optax_lookahead_experiments.synthetic``: words 0-399 positive, 400-799 negative,
800-999 never used), and prints how many
embedding rows the last step moved although its batch did not contain their
word (lazy: none), and the held-out accuracy, evaluated on the slow weights
for lookahead.

Run: python examples/quickstart.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lookahead import lazy_mask, lookahead, slow_params
from optax_lookahead_experiments.synthetic import VOCAB, make_data

# 301 steps: the last one is not a lookahead sync (a sync moves every row
# that drifted back toward the slow weights, which is not staleness).
DIM, BATCH, STEPS = 16, 32, 301


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "embedding": jax.random.uniform(k1, (VOCAB, DIM), minval=-0.05, maxval=0.05),
        "kernel": jax.random.normal(k2, (DIM, 1)) / jnp.sqrt(DIM),
        "bias": jnp.zeros((1,)),
    }


def logits(params, words):
    pooled = params["embedding"][words].mean(axis=1)
    return (pooled @ params["kernel"] + params["bias"])[:, 0]


def loss_fn(params, words, labels):
    return optax.sigmoid_binary_cross_entropy(logits(params, words), labels).mean()


def accuracy(params, words, labels):
    return float(jnp.mean((logits(params, words) > 0) == (labels > 0.5)))


def train(tx, params, data, steps):
    words, labels = data

    @jax.jit
    def step(params, state, i):
        batch = jax.lax.dynamic_slice_in_dim(words, i * BATCH, BATCH)
        batch_labels = jax.lax.dynamic_slice_in_dim(labels, i * BATCH, BATCH)
        grads = jax.grad(loss_fn)(params, batch, batch_labels)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for i in range(steps):
        before = params
        params, state = step(params, state, i % (len(words) // BATCH))
    last_batch = words[(i % (len(words) // BATCH)) * BATCH :][:BATCH]
    in_batch = jnp.zeros(VOCAB, jnp.bool_).at[last_batch.reshape(-1)].set(True)
    moved = jnp.any(params["embedding"] != before["embedding"], axis=1)
    stale_moves = int(jnp.sum(moved & ~in_batch))
    return params, state, stale_moves


def main():
    rng = np.random.default_rng(0)
    train_data, test_data = make_data(rng, 4096), make_data(rng, 1024)
    start = init_params(jax.random.key(0))
    optimizers = {
        "optax.adam(1e-2)": optax.adam(1e-2),
        "lazy_mask(adam)": lazy_mask(optax.adam(1e-2)),
        "lookahead(lazy_mask(adam))": lookahead(lazy_mask(optax.adam(1e-2))),
    }
    print(f"{'optimizer':28} {'rows moved, not in batch':>25} {'test accuracy':>14}")
    for name, tx in optimizers.items():
        params, state, stale_moves = train(tx, start, train_data, STEPS)
        eval_params = slow_params(state, default=params)  # the paper's choice
        test_accuracy = accuracy(eval_params, *test_data)
        print(f"{name:28} {stale_moves:>25} {test_accuracy:>14.3f}")


if __name__ == "__main__":
    main()
