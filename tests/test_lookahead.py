"""lookahead against the paper's algorithm, optax.lookahead and hand-derived runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optax_lookahead import LookaheadState, lookahead, slow_params
from tests import oracles
from tests.helpers import (
    assert_trees_close,
    leaves64,
    quadratic_problem,
    standard_promotion,
    train,
)

INNER = {
    "sgd": (lambda: optax.sgd(0.1), lambda: oracles.NumpySGD(0.1)),
    "momentum": (
        lambda: optax.sgd(0.1, momentum=0.9),
        lambda: oracles.NumpySGD(0.1, momentum=0.9),
    ),
    "adam": (
        lambda: standard_promotion(optax.adam(0.05)),
        lambda: oracles.NumpyAdam(0.05),
    ),
}

shapes_strategy = st.lists(
    st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple),
    min_size=1,
    max_size=3,
)


def assert_matches_oracle(history, expected):
    for step, ((fast, slow), (np_fast, np_slow)) in enumerate(zip(history, expected)):
        for name, got, want in [("fast", fast, np_fast), ("slow", slow, np_slow)]:
            for got_leaf, want_leaf in zip(leaves64(got), want):
                np.testing.assert_allclose(
                    got_leaf,
                    want_leaf,
                    rtol=2e-4,
                    atol=2e-5,
                    err_msg=f"{name} weights differ after step {step + 1}",
                )


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=shapes_strategy,
    sync_period=st.integers(1, 6),
    slow_step_size=st.floats(0.05, 1.0),
    steps=st.integers(1, 14),
    inner_name=st.sampled_from(sorted(INNER)),
    on_sync=st.sampled_from(["keep", "reset", "pullback"]),
    seed=st.integers(0, 2**16),
)
def test_matches_numpy_loop_of_the_paper(
    sync_strategy, shapes, sync_period, slow_step_size, steps, inner_name, on_sync, seed
):
    make_inner, make_oracle = INNER[inner_name]
    params, grad_fn, np_grad_fn, np_params = quadratic_problem(shapes, seed)
    tx = lookahead(make_inner(), sync_period, slow_step_size, on_sync)

    history, _ = train(tx, params, grad_fn, steps)

    expected = oracles.lookahead_trajectory(
        make_oracle(),
        np_params,
        np_grad_fn,
        sync_period,
        slow_step_size,
        steps,
        on_sync,
    )
    assert_matches_oracle(history, expected)


@pytest.mark.parametrize("inner_name", sorted(INNER))
@pytest.mark.parametrize("sync_period,slow_step_size", [(1, 0.5), (3, 0.8), (5, 0.5)])
def test_matches_optax_lookahead(inner_name, sync_period, slow_step_size):
    """Same math as optax.lookahead, whose slow weights live in the params."""
    make_inner, _ = INNER[inner_name]
    params, grad_fn, _, _ = quadratic_problem([(3, 2), (4,)], seed=7)
    steps = 12

    ours, _ = train(
        lookahead(make_inner(), sync_period, slow_step_size), params, grad_fn, steps
    )

    reference = standard_promotion(
        optax.lookahead(make_inner(), sync_period, slow_step_size)
    )
    pair = optax.LookaheadParams.init_synced(params)
    with jax.numpy_dtype_promotion("standard"):
        state = reference.init(pair)
        for step in range(steps):
            updates, state = reference.update(grad_fn(pair.fast), state, pair)
            pair = optax.apply_updates(pair, updates)
            fast, slow = ours[step]
            for got, want in [(fast, pair.fast), (slow, pair.slow)]:
                assert_trees_close(got, want, rtol=1e-5, atol=1e-6)


def test_hand_derived_trajectory(sync_strategy):
    """SGD(1) on a constant gradient of 1, k=3, alpha=0.5.

    fast: 3 -> 2 -> 1 -> sync: slow = 3 + 0.5 * (0 - 3) = 1.5, fast = 1.5
    -> 0.5 -> -0.5 -> sync: slow = 1.5 + 0.5 * (-1.5 - 1.5) = 0.
    """
    tx = lookahead(optax.sgd(1.0), sync_period=3, slow_step_size=0.5)
    history, state = train(tx, jnp.array(3.0), lambda p: jnp.ones_like(p), 6)
    assert [float(fast) for fast, _ in history] == [2.0, 1.0, 1.5, 0.5, -0.5, 0.0]
    assert [float(slow) for _, slow in history] == [3.0, 3.0, 1.5, 1.5, 1.5, 0.0]
    assert int(state.count) == 6


def test_slow_step_size_one_equals_inner_alone():
    params, grad_fn, _, _ = quadratic_problem([(5,), (2, 3)], seed=3)
    inner = standard_promotion(optax.adam(0.1))
    with_lookahead, _ = train(lookahead(inner, 4, 1.0), params, grad_fn, 13)
    alone, _ = train(inner, params, grad_fn, 13)
    for (fast, _), (plain, _) in zip(with_lookahead, alone):
        assert_trees_close(fast, plain, rtol=1e-6)
    assert_trees_close(with_lookahead[11][1], alone[11][0], rtol=1e-6)


def test_sync_every_step_scales_sgd():
    """With k=1, lookahead(sgd(lr), alpha) is sgd(alpha * lr)."""
    params, grad_fn, _, _ = quadratic_problem([(4,)], seed=5)
    every_step, _ = train(lookahead(optax.sgd(0.2), 1, 0.25), params, grad_fn, 8)
    scaled, _ = train(optax.sgd(0.05), params, grad_fn, 8)
    for (fast, slow), (plain, _) in zip(every_step, scaled):
        assert_trees_close(fast, plain, rtol=1e-6)
        assert_trees_close(fast, slow, rtol=0, atol=0)


def test_non_sync_steps_return_inner_updates_unchanged(sync_strategy):
    params, grad_fn, _, _ = quadratic_problem([(3, 3)], seed=11)
    inner = optax.sgd(0.1, momentum=0.9)
    tx = lookahead(inner, sync_period=4)
    state, inner_state = tx.init(params), inner.init(params)
    slow_before = slow_params(state)
    for _ in range(3):
        grads = grad_fn(params)
        updates, state = tx.update(grads, state, params)
        inner_updates, inner_state = inner.update(grads, inner_state, params)
        for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(inner_updates)):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(leaves64(slow_params(state)), leaves64(slow_before)):
            np.testing.assert_array_equal(got, want)
        params = optax.apply_updates(params, updates)


def test_sync_lands_params_on_slow_weights(sync_strategy):
    params, grad_fn, _, _ = quadratic_problem([(6,), (2, 2)], seed=2)
    history, _ = train(
        lookahead(standard_promotion(optax.adam(0.3)), 2, 0.7), params, grad_fn, 6
    )
    for fast, slow in history[1::2]:
        assert_trees_close(fast, slow, rtol=0, atol=1e-7)


def test_reset_keeps_schedules_running_unlike_optax():
    """A schedule in the inner optimizer continues across resets.

    optax.lookahead(reset_state=True) re-runs inner.init, which restarts the
    schedule's step count every period; ours only clears the momenta.
    """
    schedule = optax.linear_schedule(1.0, 0.0, transition_steps=8)
    inner = optax.chain(optax.trace(decay=0.5), optax.scale_by_learning_rate(schedule))
    tx = lookahead(inner, sync_period=2, inner_state_on_sync="reset")
    history, state = train(tx, jnp.array(0.0), lambda p: jnp.ones_like(p), 6)
    # Step counts were never reset: 6 updates, 6 schedule steps.
    counts = [
        int(x) for x in jax.tree.leaves(state.inner_state) if x.dtype == jnp.int32
    ]
    assert counts == [6]
    # The momentum is cleared at every sync.
    assert float(state.inner_state[0].trace) == 0.0

    with jax.numpy_dtype_promotion("standard"):
        reference = optax.lookahead(inner, 2, 0.5, reset_state=True)
        reference_state = reference.init(optax.LookaheadParams.init_synced(0.0))
        pair = optax.LookaheadParams.init_synced(jnp.array(0.0))
        for _ in range(6):
            updates, reference_state = reference.update(
                jnp.array(1.0), reference_state, pair
            )
            pair = optax.apply_updates(pair, updates)
    optax_counts = [
        int(x)
        for x in jax.tree.leaves(reference_state.fast_state)
        if x.dtype == jnp.int32
    ]
    assert optax_counts == [0], "optax restarts the schedule at every sync"


def test_reset_with_adam_keeps_bias_correction_count(sync_strategy):
    params, grad_fn, np_grad_fn, np_params = quadratic_problem([(3,)], seed=4)
    tx = lookahead(standard_promotion(optax.adam(0.05)), 3, 0.5, "reset")
    history, state = train(tx, params, grad_fn, 7)
    assert int(state.inner_state[0].count) == 7
    expected = oracles.lookahead_trajectory(
        oracles.NumpyAdam(0.05), np_params, np_grad_fn, 3, 0.5, 7, on_sync="reset"
    )
    assert_matches_oracle(history, expected)


def test_pullback_stores_state_at_sync_and_keep_stores_none():
    params = {"w": jnp.ones(3)}
    pullback = lookahead(optax.sgd(0.1, momentum=0.9), inner_state_on_sync="pullback")
    state = pullback.init(params)
    assert jax.tree.structure(state.inner_state_at_sync) == jax.tree.structure(
        state.inner_state
    )
    assert lookahead(optax.sgd(0.1)).init(params).inner_state_at_sync is None


def test_init_copies_params_into_distinct_buffers():
    params = {"w": jnp.arange(4.0), "b": jnp.zeros(())}
    state = lookahead(optax.sgd(0.1)).init(params)
    assert isinstance(state, LookaheadState)
    for param, slow in zip(jax.tree.leaves(params), jax.tree.leaves(state.slow)):
        np.testing.assert_array_equal(param, slow)
        assert param.unsafe_buffer_pointer() != slow.unsafe_buffer_pointer()
    assert state.count.dtype == jnp.int32 and int(state.count) == 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_nan_gradients_stay_visible(sync_strategy, dtype):
    tx = lookahead(optax.sgd(0.1), sync_period=2)
    params = jnp.ones(3, dtype)
    state = tx.init(params)
    grads = jnp.array([1.0, jnp.nan, 1.0], dtype)
    for _ in range(2):  # a non-sync step, then a sync step
        updates, state = tx.update(grads, state, params)
        assert bool(jnp.isnan(updates[1]))
        assert not bool(jnp.isnan(updates[0]))
        params = optax.apply_updates(params, updates)
    assert bool(jnp.isnan(slow_params(state)[1]))
