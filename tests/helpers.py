"""Small helpers shared by the tests: quadratic problems and training loops."""

import chex
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

    params = {n: jnp.asarray(x, dtype) for n, x in zip(names, start, strict=True)}
    c_tree = {n: jnp.asarray(c, dtype) for n, c in zip(names, curvature, strict=True)}
    t_tree = {n: jnp.asarray(t, dtype) for n, t in zip(names, target, strict=True)}

    def grad_fn(p):
        return jax.tree.map(lambda x, c, t: c * (x - t), p, c_tree, t_tree)

    def numpy_grad_fn(leaves):
        return [
            c.astype(np.float64) * (x - t.astype(np.float64))
            for x, c, t in zip(leaves, curvature, target, strict=True)
        ]

    numpy_start = [x.astype(np.float64) for x in start]
    return params, grad_fn, numpy_grad_fn, numpy_start


def step(tx, params, state, grads, **extra_args):
    """One training step as optax users write it: update, then apply."""
    updates, state = tx.update(grads, state, params, **extra_args)
    return optax.apply_updates(params, updates), state


def train(tx, params, grad_fn, steps, *, jit=False, **extra_args):
    """Runs ``steps`` updates; returns [(params, slow or None)] and the state."""
    state = tx.init(params)
    run_step = jax.jit(step, static_argnums=0) if jit else step
    history = []
    for _ in range(steps):
        params, state = run_step(tx, params, state, grad_fn(params), **extra_args)
        history.append((params, slow_params(state, default=None)))
    return history, state


def leaves64(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def assert_trees_close(got, want, rtol=1e-6, atol=0.0):
    """Equal tree structures, and leaves close in float64 (chex)."""
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: np.asarray(x, np.float64), got),
        jax.tree.map(lambda x: np.asarray(x, np.float64), want),
        rtol=rtol,
        atol=atol,
    )


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
