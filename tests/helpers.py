"""Small helpers shared by the tests: quadratic problems and training loops."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lookahead import slow_params


def quadratic_problem(shapes, seed, dtype=jnp.float32):
    """A separable quadratic: loss = sum(c * (x - target)**2) / 2 per leaf.

    Returns the initial params (a dict of leaves), a JAX gradient function and
    the same gradient function in float64 NumPy over a list of leaves.
    """
    rng = np.random.default_rng(seed)
    names = [f"leaf{i}" for i in range(len(shapes))]
    start = [rng.normal(size=s).astype(np.float32) for s in shapes]
    curvature = [rng.uniform(0.5, 2.0, size=s).astype(np.float32) for s in shapes]
    target = [rng.normal(size=s).astype(np.float32) for s in shapes]

    params = {n: jnp.asarray(x, dtype) for n, x in zip(names, start)}
    c_tree = {n: jnp.asarray(c, dtype) for n, c in zip(names, curvature)}
    t_tree = {n: jnp.asarray(t, dtype) for n, t in zip(names, target)}

    def grad_fn(p):
        return jax.tree.map(lambda x, c, t: c * (x - t), p, c_tree, t_tree)

    def numpy_grad_fn(leaves):
        return [
            c.astype(np.float64) * (x - t.astype(np.float64))
            for x, c, t in zip(leaves, curvature, target)
        ]

    numpy_start = [x.astype(np.float64) for x in start]
    return params, grad_fn, numpy_grad_fn, numpy_start


def train(tx, params, grad_fn, steps, *, jit=False, **extra_args):
    """Runs ``steps`` updates; returns [(params, slow or None)] and the state."""
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    history = []
    for _ in range(steps):
        updates, state = update(grad_fn(params), state, params, **extra_args)
        params = optax.apply_updates(params, updates)
        try:
            slow = slow_params(state)
        except ValueError:
            slow = None
        history.append((params, slow))
    return history, state


def leaves64(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def assert_trees_close(got, want, **tolerance):
    """assert_allclose leaf by leaf, in float64; trees must have equal structure."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for got_leaf, want_leaf in zip(leaves64(got), leaves64(want)):
        np.testing.assert_allclose(got_leaf, want_leaf, **tolerance)


def standard_promotion(
    tx: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Runs ``tx``'s own init and update under JAX's default promotion rules."""
    tx = optax.with_extra_args_support(tx)

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init, update)
