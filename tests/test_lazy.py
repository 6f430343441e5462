"""lazy_mask against a reference lazy Adam, and its guarantees row by row."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optax_lookahead import lazy_mask, lookahead
from tests import oracles
from tests.helpers import assert_trees_close, leaves64, standard_promotion, step


def sampled_grads(rng, shape, sampled_ids):
    """A gradient for a table of ``shape`` with non-zero rows at ``sampled_ids``."""
    grad = np.zeros(shape, np.float32)
    grad[sampled_ids] = rng.normal(size=(len(sampled_ids),) + shape[1:])
    return grad


def embedding_problem(rng, steps, table_shape=(12, 3), per_step=3):
    """Params with one embedding table and one dense leaf, and grads per step."""
    params = {
        "embedding": rng.normal(size=table_shape).astype(np.float32),
        "kernel": rng.normal(size=(3, 2)).astype(np.float32),
    }
    grads = []
    for _ in range(steps):
        ids = rng.choice(table_shape[0], size=per_step, replace=False)
        grads.append(
            {
                "embedding": sampled_grads(rng, table_shape, ids),
                "kernel": rng.normal(size=(3, 2)).astype(np.float32),
            }
        )
    return params, grads


def run_sequence(tx, params, grads_per_step, jit=True, **extra_args):
    """Applies ``tx`` to a fixed sequence of gradients; returns params per step."""
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    history, states = [], [state]
    for grads in grads_per_step:
        updates, state = update(
            jax.tree.map(jnp.asarray, grads), state, params, **extra_args
        )
        params = optax.apply_updates(params, updates)
        history.append(params)
        states.append(state)
    return history, states


@settings(deadline=None)
@given(
    rows=st.integers(2, 16),
    trailing=st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple),
    steps=st.integers(1, 8),
    freeze_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_lazy_adam(rows, trailing, steps, freeze_state, seed):
    rng = np.random.default_rng(seed)
    table_shape = (rows,) + trailing
    params, grads = embedding_problem(
        rng, steps, table_shape, per_step=max(1, rows // 4)
    )
    tx = lazy_mask(standard_promotion(optax.adam(0.05)), freeze_state=freeze_state)
    history, _ = run_sequence(tx, params, grads, jit=False)

    numpy_lazy = oracles.NumpyLazy(oracles.NumpyAdam(0.05), [True, False], freeze_state)
    expected, _ = oracles.plain_trajectory(
        numpy_lazy, leaves64(params), [leaves64(g) for g in grads]
    )
    for got, want in zip(history, expected, strict=True):
        for got_leaf, want_leaf in zip(leaves64(got), want, strict=True):
            # float32 against float64: Adam divides by sqrt(v), which magnifies
            # rounding where gradients are small, so allow a 1e-4 step fraction.
            np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("freeze_state", [False, True])
def test_lookahead_of_lazy_matches_reference(freeze_state):
    rng = np.random.default_rng(0)
    params, grads = embedding_problem(rng, steps=11)
    tx = lookahead(
        lazy_mask(standard_promotion(optax.adam(0.05)), freeze_state=freeze_state),
        sync_period=3,
        slow_step_size=0.6,
    )
    history, _ = run_sequence(tx, params, grads)

    # The oracle's gradients do not depend on the weights, so feed them in order.
    grads_iter = iter([leaves64(g) for g in grads])
    expected = oracles.lookahead_trajectory(
        oracles.NumpyLazy(oracles.NumpyAdam(0.05), [True, False], freeze_state),
        leaves64(params),
        lambda _: next(grads_iter),
        sync_period=3,
        slow_step_size=0.6,
        steps=len(grads),
    )
    for got, (want, _) in zip(history, expected, strict=True):
        for got_leaf, want_leaf in zip(leaves64(got), want, strict=True):
            np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("freeze_state", [False, True])
def test_unsampled_rows_never_move(freeze_state):
    """Rows 8..11 are never sampled: bit-identical after 30 jitted steps."""
    rng = np.random.default_rng(1)
    table = rng.normal(size=(12, 4)).astype(np.float32)
    grads = [
        {"embedding": sampled_grads(rng, (12, 4), rng.choice(8, 3, replace=False))}
        for _ in range(30)
    ]
    tx = lookahead(
        lazy_mask(standard_promotion(optax.adam(0.1)), freeze_state=freeze_state),
        sync_period=4,
    )
    history, _ = run_sequence(tx, {"embedding": table}, grads)
    final = np.asarray(history[-1]["embedding"])
    np.testing.assert_array_equal(final[8:], table[8:])
    assert np.all(final[:8] != table[:8]), "sampled rows must move"


def test_without_lazy_mask_momentum_moves_unsampled_rows():
    """The problem lazy_mask solves, shown on the same data."""
    table = np.ones((4, 2), np.float32)
    grads = [{"embedding": sampled_grads(np.random.default_rng(0), (4, 2), [0])}]
    grads.append({"embedding": np.zeros((4, 2), np.float32)})
    dense, _ = run_sequence(
        standard_promotion(optax.adam(0.1)), {"embedding": table}, grads
    )
    lazy, _ = run_sequence(
        lazy_mask(standard_promotion(optax.adam(0.1))), {"embedding": table}, grads
    )
    assert not np.array_equal(dense[1]["embedding"][0], dense[0]["embedding"][0])
    np.testing.assert_array_equal(lazy[1]["embedding"][0], lazy[0]["embedding"][0])


def test_frozen_moments_stay_bit_identical():
    rng = np.random.default_rng(2)
    params, grads = embedding_problem(rng, steps=10)
    tx = lazy_mask(standard_promotion(optax.adam(0.1)), freeze_state=True)
    _, states = run_sequence(tx, params, grads)
    for before, after, step_grads in zip(states[:-1], states[1:], grads, strict=True):
        unsampled = np.abs(step_grads["embedding"]).sum(axis=1) == 0
        adam_before, adam_after = before.inner_state[0], after.inner_state[0]
        for name in ("mu", "nu"):
            old = np.asarray(getattr(adam_before, name)["embedding"])
            new = np.asarray(getattr(adam_after, name)["embedding"])
            np.testing.assert_array_equal(new[unsampled], old[unsampled])
            assert np.all(new[~unsampled] != old[~unsampled])
        # The step count stays global.
        assert int(adam_after.count) == int(adam_before.count) + 1


def test_su_variant_lets_moments_decay():
    rng = np.random.default_rng(3)
    params, grads = embedding_problem(rng, steps=2)
    _, states = run_sequence(
        lazy_mask(standard_promotion(optax.adam(0.1))), params, grads
    )
    _, dense_states = run_sequence(standard_promotion(optax.adam(0.1)), params, grads)
    assert_trees_close(states[-1].inner_state, dense_states[-1], rtol=0, atol=0)


@pytest.mark.parametrize("freeze_state", [False, True])
def test_adamw_decays_only_sampled_rows(freeze_state):
    """Decoupled decay inside the wrapped optimizer: the answer to L2 terms."""
    rng = np.random.default_rng(4)
    table = rng.normal(size=(10, 3)).astype(np.float32)
    ids = np.array([1, 4, 7])
    grads = {"embedding": sampled_grads(rng, (10, 3), ids)}
    adamw = standard_promotion(optax.adamw(0.1, weight_decay=0.5))
    lazy = lazy_mask(adamw, freeze_state=freeze_state)

    params = {"embedding": jnp.asarray(table)}
    updates, _ = lazy.update(grads, lazy.init(params), params)
    dense_updates, _ = adamw.update(grads, adamw.init(params), params)

    updates, dense_updates = (
        np.asarray(updates["embedding"]),
        dense_updates["embedding"],
    )
    unsampled = np.setdiff1d(np.arange(10), ids)
    np.testing.assert_array_equal(updates[unsampled], 0.0)
    np.testing.assert_array_equal(updates[ids], np.asarray(dense_updates)[ids])
    # The dense optimizer decays every row, which is what lazy_mask prevents.
    assert np.all(np.asarray(dense_updates)[unsampled] != 0)


def test_explicit_sampled_rows_override_detection():
    """An L2 term makes every gradient row non-zero; the ids say what was sampled."""
    rng = np.random.default_rng(5)
    table = rng.normal(size=(8, 2)).astype(np.float32)
    params = {"embedding": jnp.asarray(table), "bias": jnp.zeros(2)}
    grads = {
        "embedding": jnp.asarray(sampled_grads(rng, (8, 2), [2, 5]) + 1e-3 * table),
        "bias": jnp.ones(2),
    }
    tx = lazy_mask(standard_promotion(optax.adam(0.1)))
    state = tx.init(params)

    detected, _ = tx.update(grads, state, params)
    assert np.all(np.asarray(detected["embedding"]) != 0)

    as_ids = jnp.array([5, 2, 2, -1, 8])  # repeats, -1 padding, out of range
    as_mask = jnp.zeros(8, jnp.bool_).at[jnp.array([2, 5])].set(True)
    as_tree = {"embedding": as_ids, "bias": None}
    for sampled_rows in (as_ids, as_mask, as_tree):
        updates, _ = jax.jit(tx.update)(grads, state, params, sampled_rows=sampled_rows)
        moved = np.flatnonzero(np.abs(np.asarray(updates["embedding"])).sum(axis=1))
        np.testing.assert_array_equal(moved, [2, 5])
        assert np.all(np.asarray(updates["bias"]) != 0), "dense leaves move as usual"


@pytest.mark.parametrize("jit", [False, True])
def test_a_python_list_of_ids_is_one_array_also_for_list_params(jit):
    # Not a tree of one id per table: [0, 5] names rows 0 and 5 of each table.
    params = [jnp.ones((6, 2)), jnp.ones((6, 3))]
    tx = lazy_mask(optax.sgd(1.0), mask=[True, True])
    update = jax.jit(tx.update) if jit else tx.update
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = update(grads, tx.init(params), params, sampled_rows=[0, 5])
    for table in updates:
        moved = np.flatnonzero(np.abs(np.asarray(table)).sum(axis=1))
        np.testing.assert_array_equal(moved, [0, 5])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_nan_and_tiny_rows_count_as_sampled(dtype):
    tiny = float(jnp.finfo(dtype).tiny)  # XLA flushes subnormals to zero
    grads = jnp.zeros((5, 3), dtype)
    grads = grads.at[1, 0].set(jnp.nan).at[3, 2].set(tiny)
    params = {"embedding": jnp.ones((5, 3), dtype)}
    tx = lazy_mask(optax.sgd(1.0, momentum=0.9))
    updates, _ = tx.update({"embedding": grads}, tx.init(params), params)
    updates = np.asarray(updates["embedding"], np.float64)
    assert np.isnan(updates[1, 0]), "a NaN gradient must stay visible"
    assert updates[3, 2] != 0, "a tiny gradient row is a sampled row"
    np.testing.assert_array_equal(updates[[0, 2, 4]], 0.0)


@pytest.mark.parametrize(
    "inner",
    [
        optax.sgd(0.1, momentum=0.9),
        optax.adagrad(0.1),
        optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.5)),
        optax.rmsprop(0.01, momentum=0.9),
    ],
    ids=["momentum", "adagrad", "chain", "rmsprop"],
)
def test_freeze_state_works_for_any_optimizer_mirroring_params(inner):
    rng = np.random.default_rng(6)
    params, grads = embedding_problem(rng, steps=5)
    tx = lazy_mask(inner, freeze_state=True)
    history, states = run_sequence(tx, params, grads)
    for before, after, step_grads in zip(states[:-1], states[1:], grads, strict=True):
        unsampled = np.abs(step_grads["embedding"]).sum(axis=1) == 0
        # Every state leaf mirroring the table keeps its unsampled rows.
        for old, new in zip(
            jax.tree.leaves(before.inner_state),
            jax.tree.leaves(after.inner_state),
            strict=True,
        ):
            if new.shape == (12, 3):
                np.testing.assert_array_equal(
                    np.asarray(new)[unsampled], np.asarray(old)[unsampled]
                )
    first, last = np.asarray(params["embedding"]), np.asarray(history[-1]["embedding"])
    never = np.abs(np.stack([g["embedding"] for g in grads])).sum(axis=(0, 2)) == 0
    np.testing.assert_array_equal(last[never], first[never])


def test_default_mask_selects_embedding_leaves_only():
    params = {
        "params": {
            "Embed_0": {"embedding": jnp.ones((6, 2))},
            "Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        }
    }
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = lazy_mask(optax.sgd(1.0, momentum=0.9))
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    updates, _ = tx.update(grads, state, params)
    assert np.all(np.asarray(updates["params"]["Embed_0"]["embedding"]) == 0)
    assert np.all(np.asarray(updates["params"]["Dense_0"]["kernel"]) != 0)


def test_mask_as_tree_and_as_callable():
    params = {"words": jnp.ones((4, 2)), "chars": jnp.ones((3, 2)), "w": jnp.ones(2)}
    grads = jax.tree.map(jnp.zeros_like, params)
    ones = jax.tree.map(jnp.ones_like, params)
    as_tree = {"words": True, "chars": False, "w": False}
    as_callable = lambda tree: {k: k == "words" for k in tree}
    for mask in (as_tree, as_callable):
        tx = lazy_mask(optax.sgd(1.0, momentum=0.9), mask=mask)
        _, state = tx.update(ones, tx.init(params), params)
        updates, _ = tx.update(grads, state, params)
        assert np.all(np.asarray(updates["words"]) == 0)
        assert np.all(np.asarray(updates["chars"]) != 0)


def test_extra_args_reach_the_inner_optimizer():
    def update(updates, state, params=None, *, factor):
        return jax.tree.map(lambda u: u * factor, updates), state

    inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    params = {"embedding": jnp.ones((3, 2))}
    grads = {"embedding": jnp.ones((3, 2))}
    for tx in (lazy_mask(inner), lookahead(lazy_mask(inner), sync_period=100)):
        updates, _ = tx.update(grads, tx.init(params), params, factor=3.0)
        np.testing.assert_array_equal(updates["embedding"], 3.0)


@pytest.mark.parametrize("freeze_state", [False, True])
def test_one_dimensional_tables_are_lazy_per_element(freeze_state):
    """Per-token biases: each element is a row (TF sparse updates, torch SparseAdam)."""
    params = {"token_bias": jnp.zeros(5), "w": jnp.zeros(2)}
    tx = lazy_mask(
        optax.sgd(1.0, momentum=0.9),
        mask={"token_bias": True, "w": False},
        freeze_state=freeze_state,
    )
    state = tx.init(params)
    grads = {"token_bias": jnp.array([1.0, 0, 0, 0, 0]), "w": jnp.ones(2)}
    params, state = step(tx, params, state, grads)
    grads = {"token_bias": jnp.array([0, 1.0, 0, 0, 0]), "w": jnp.ones(2)}
    params, state = step(tx, params, state, grads)
    np.testing.assert_array_equal(params["token_bias"], [-1.0, -1.0, 0, 0, 0])
    grads = {"token_bias": jnp.ones(5), "w": jnp.ones(2)}  # every element non-zero
    params, state = step(tx, params, state, grads, sampled_rows=jnp.array([3, -1]))
    np.testing.assert_array_equal(params["token_bias"][2:], [0.0, -1.0, 0.0])


def test_multisteps_detection_sees_every_micro_batch():
    """MultiSteps runs the wrapped optimizer on the summed micro-batches."""
    params = {"embedding": jnp.zeros((4, 2))}
    tx = optax.MultiSteps(lazy_mask(optax.sgd(1.0)), every_k_schedule=2)
    with jax.numpy_dtype_promotion("standard"):  # MultiSteps is not strict-clean
        state = tx.init(params)
        for row in (0, 1):
            grads = {"embedding": jnp.zeros((4, 2)).at[row].set(1.0)}
            params, state = step(tx, params, state, grads)
    moved = np.flatnonzero(np.any(np.asarray(params["embedding"]) != 0, axis=1))
    np.testing.assert_array_equal(moved, [0, 1])


def test_multisteps_with_ids_needs_the_union_of_the_micro_batches():
    """The documented pattern: pass all micro-batches' ids at every micro-step.

    MultiSteps hands the wrapped optimizer the extra arguments of the last
    micro-batch only; with that micro-batch's ids alone, row 0 would never move.
    """
    params = {"embedding": jnp.zeros((4, 2))}
    l2_like = {"embedding": jnp.ones((4, 2))}  # every row non-zero: ids needed
    tx = optax.MultiSteps(lazy_mask(optax.sgd(1.0)), every_k_schedule=2)
    union = jnp.array([0, 1])
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)
        for _ in range(2):
            params, state = step(tx, params, state, l2_like, sampled_rows=union)
    moved = np.flatnonzero(np.any(np.asarray(params["embedding"]) != 0, axis=1))
    np.testing.assert_array_equal(moved, [0, 1])
