"""lookahead and lazy_mask inside optax chains, wrappers and jitted loops."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_lookahead import LookaheadState, lazy_mask, lookahead, slow_params
from tests.helpers import (
    assert_trees_close,
    quadratic_problem,
    standard_promotion,
    train,
)


def adam(learning_rate=0.05):
    return standard_promotion(optax.adam(learning_rate))


@pytest.mark.parametrize(
    "before",
    [lambda: optax.clip_by_global_norm(1.0), lambda: optax.add_decayed_weights(1e-1)],
    ids=["clip_by_global_norm", "add_decayed_weights"],
)
def test_transform_before_lookahead_equals_it_inside(before):
    """chain(f, lookahead(inner)) == lookahead(chain(f, inner)): the sync
    does not look at the gradients, so where f sits must not matter."""
    params, grad_fn, _, _ = quadratic_problem([(4, 3), (5,)], seed=8)
    outside = optax.chain(before(), lookahead(adam(), 3, 0.5))
    inside = lookahead(optax.chain(before(), adam()), 3, 0.5)
    got, _ = train(outside, params, grad_fn, 10)
    want, _ = train(inside, params, grad_fn, 10)
    for (fast, slow), (want_fast, want_slow) in zip(got, want, strict=True):
        assert_trees_close(fast, want_fast, rtol=1e-6, atol=1e-7)
        assert_trees_close(slow, want_slow, rtol=1e-6, atol=1e-7)


def test_map_params_reaches_slow_weights_and_inner_moments():
    params = {"embedding": jnp.ones((3, 2)), "w": jnp.ones(2)}
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        lookahead(lazy_mask(adam()), inner_state_on_sync="pullback"),
    )
    state = tx.init(params)
    mapped = optax.tree.map_params(tx, lambda x: x + 7, state)
    assert_trees_close(slow_params(mapped), jax.tree.map(lambda x: x + 7, params))
    lookahead_state = mapped[1]
    adam_state = lookahead_state.inner_state.inner_state[0]
    assert_trees_close(adam_state.mu, jax.tree.map(lambda x: x * 0 + 7, params))
    assert int(lookahead_state.step) == 0 and int(adam_state.count) == 0


def test_map_params_builds_sharding_specs_for_the_state():
    params = {"embedding": jnp.ones((3, 2))}
    tx = lookahead(lazy_mask(adam()))
    specs = optax.tree.map_params(
        tx,
        lambda _: "param-spec",
        jax.eval_shape(tx.init, params),
        transform_non_params=lambda _: "scalar-spec",
    )
    assert specs.slow == {"embedding": "param-spec"}
    assert specs.step == "scalar-spec"


@pytest.mark.parametrize("freeze_state", [False, True])
@pytest.mark.parametrize("on_sync", ["keep", "reset", "pullback"])
def test_jit_with_donation_runs_without_retracing(sync_staging, freeze_state, on_sync):
    params = {
        "embedding": jnp.ones((16, 4)),
        "dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
    }
    tx = lookahead(
        lazy_mask(adam(), freeze_state=freeze_state),
        sync_period=3,
        inner_state_on_sync=on_sync,
        sync_staging=sync_staging,
    )

    @jax.jit
    def grads_for(step):
        row = step % 16
        grads = jax.tree.map(jnp.ones_like, params)
        return {**grads, "embedding": jnp.zeros((16, 4)).at[row].set(1.0)}

    chex.clear_trace_counter()

    @chex.assert_max_traces(n=1)
    def step_fn(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step_fn, donate_argnums=(0, 1))
    params_now, state = params, tx.init(params)
    # Keep a host copy: the donated input buffers are invalid after the call.
    start = jax.tree.map(np.asarray, params)
    for i in range(20):
        params_now, state = step(params_now, state, grads_for(i))
    assert int(state.step) == 20
    # Rows 0..15 were each sampled at least once and moved; the dense leaves too.
    assert np.all(np.asarray(params_now["embedding"]) != start["embedding"])
    assert np.all(np.asarray(params_now["dense"]["kernel"]) != start["dense"]["kernel"])


def test_donated_buffers_are_reused(sync_staging):
    params = {"w": jnp.ones((64, 64))}
    tx = lookahead(optax.sgd(0.1, momentum=0.9), sync_staging=sync_staging)
    state = tx.init(params)

    def step_fn(params, state):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step_fn, donate_argnums=(0, 1))
    old_params, old_state = params, state
    params, state = step(params, state)
    assert old_params["w"].is_deleted() and old_state.slow["w"].is_deleted()
    assert not state.slow["w"].is_deleted()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("freeze_state", [False, True])
@pytest.mark.parametrize("on_sync", ["keep", "pullback"])
def test_dtypes_preserved(sync_staging, dtype, freeze_state, on_sync):
    params = {"embedding": jnp.ones((6, 3), dtype), "w": jnp.ones((3,), dtype)}
    tx = lookahead(
        lazy_mask(adam(0.1), freeze_state=freeze_state),
        sync_period=2,
        inner_state_on_sync=on_sync,
        sync_staging=sync_staging,
    )
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(4):  # two syncs
        grads = {
            "embedding": jnp.zeros((6, 3), dtype).at[i].set(1),
            "w": jnp.ones(3, dtype),
        }
        updates, state = step(grads, state, params)
        assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(dtype)}
        params = optax.apply_updates(params, updates)
        assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
    float_state = [
        x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    assert set(float_state) == {jnp.dtype(dtype)}
    assert np.all(np.isfinite(np.asarray(params["embedding"], np.float32)))
    assert not np.array_equal(np.asarray(params["w"], np.float32), np.ones(3))


def test_inject_hyperparams_around_the_inner_optimizer():
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    tx = lookahead(inner, sync_period=10)
    params = jnp.zeros(2)
    state = tx.init(params)
    updates, state = tx.update(jnp.ones(2), state, params)
    np.testing.assert_allclose(updates, -0.1)
    state.inner_state.hyperparams["learning_rate"] = jnp.array(0.5)
    updates, state = tx.update(jnp.ones(2), state, params)
    np.testing.assert_allclose(updates, -0.5)


def test_inject_hyperparams_around_lookahead():
    """slow_step_size (and sync_period) become state that can change at run time."""
    tx = optax.inject_hyperparams(lookahead, static_args=("inner",))(
        inner=optax.sgd(1.0), sync_period=2, slow_step_size=0.5
    )
    params = jnp.array(4.0)
    state = tx.init(params)
    state.hyperparams["slow_step_size"] = jnp.array(0.25)
    step = jax.jit(tx.update)
    for _ in range(2):
        updates, state = step(jnp.array(1.0), state, params)
        params = optax.apply_updates(params, updates)
    # fast 4 -> 3 -> 2; slow = 4 + 0.25 * (2 - 4) = 3.5.
    assert float(params) == 3.5 and float(slow_params(state)) == 3.5


def test_multisteps_around_lookahead_counts_only_real_steps():
    tx = optax.MultiSteps(lookahead(optax.sgd(1.0), sync_period=2), every_k_schedule=3)
    params = jnp.array(10.0)
    # MultiSteps itself is not clean under strict promotion.
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)
        for _ in range(6):  # six micro-batches: two real steps, the second a sync
            updates, state = tx.update(jnp.array(1.0), state, params)
            params = optax.apply_updates(params, updates)
    # fast 10 -> 9 -> 8 (sync): slow = 10 + 0.5 * (8 - 10) = 9.
    assert float(params) == 9.0 and float(slow_params(state)) == 9.0
    inner = state.inner_opt_state
    assert isinstance(inner, LookaheadState) and int(inner.step) == 2


def test_apply_if_finite_skips_a_nan_step_and_keeps_the_period():
    tx = optax.apply_if_finite(lookahead(optax.sgd(1.0), sync_period=2), 5)
    params = jnp.array(10.0)
    state = tx.init(params)
    for grad in (1.0, jnp.nan, 1.0):
        updates, state = tx.update(jnp.asarray(grad), state, params)
        params = optax.apply_updates(params, updates)
    assert float(params) == 9.0 and float(slow_params(state)) == 9.0
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 1


def test_tree_get_finds_slow():
    tx = optax.chain(optax.clip(1.0), lookahead(adam()))
    state = tx.init({"w": jnp.ones(2)})
    assert_trees_close(optax.tree.get(state, "slow"), {"w": jnp.ones(2)})


def test_vmap_over_independent_problems():
    tx = lookahead(optax.sgd(1.0), sync_period=2, slow_step_size=0.5)
    starts = jnp.array([4.0, 8.0])

    def run(params):
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(jnp.ones_like(params), state, params)
            params = optax.apply_updates(params, updates)
        return params

    np.testing.assert_array_equal(jax.vmap(run)(starts), [3.0, 7.0])
