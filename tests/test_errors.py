"""Every bad input gets an error that names the argument and what was wrong."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_lookahead import (
    lazy_mask,
    lookahead,
    lookahead_jit,
    slow_params,
    sparse_lazy,
    sparse_rows,
    update_and_apply,
)

WORKING_FORM = "lookahead(lazy_mask(optax.adam(1e-3)))"


@pytest.mark.parametrize(
    "sync_period", [0, -3, 2.5, True, "5", np.array([2, 3]), 2**31, 2**30 + 1]
)
def test_bad_sync_period(sync_period):
    with pytest.raises(ValueError, match="sync_period"):
        lookahead(optax.sgd(0.1), sync_period=sync_period)


@pytest.mark.parametrize(
    "slow_step_size", [0.0, 1.5, -0.5, float("nan"), "0.5", None, True, 1e-50]
)
def test_bad_slow_step_size(slow_step_size):
    with pytest.raises(ValueError, match="slow_step_size"):
        lookahead(optax.sgd(0.1), slow_step_size=slow_step_size)


def test_good_hyperparameters_of_other_types_are_accepted():
    lookahead(optax.sgd(0.1), sync_period=np.int64(3), slow_step_size=np.float32(1.0))
    lookahead(optax.sgd(0.1), sync_period=jnp.array(3), slow_step_size=jnp.array(0.2))


def test_bad_inner_state_on_sync():
    with pytest.raises(ValueError, match="inner_state_on_sync.*'keep'"):
        lookahead(optax.sgd(0.1), inner_state_on_sync="restart")


def test_bad_sync_staging():
    with pytest.raises(ValueError, match="sync_staging.*'cond'"):
        lookahead(optax.sgd(0.1), sync_staging="branch")


def test_freeze_state_must_be_a_bool():
    with pytest.raises(TypeError, match="freeze_state"):
        lazy_mask(optax.sgd(0.1), freeze_state="yes")


@pytest.mark.parametrize("build", [lookahead, lazy_mask, sparse_lazy])
def test_inner_must_be_a_transformation(build):
    with pytest.raises(
        TypeError, match="inner must be an optax GradientTransformation"
    ):
        build(jnp.ones(3))


def test_update_without_params():
    tx = lookahead(optax.sgd(0.1))
    state = tx.init(jnp.ones(2))
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(2), state)


def test_lazy_mask_without_optimizer_shows_the_working_form():
    with pytest.raises(TypeError) as error:
        optax.chain(lazy_mask(), lookahead(optax.adam(1e-3)))
    assert WORKING_FORM in str(error.value)


def test_lazy_mask_around_lookahead_is_refused_at_construction():
    with pytest.raises(ValueError, match="put it inside") as error:
        lazy_mask(lookahead(optax.adam(1e-3)))
    assert WORKING_FORM in str(error.value)
    with pytest.raises(ValueError, match="put it inside") as error:
        sparse_lazy(lookahead(optax.adam(1e-3)))
    assert "lookahead(sparse_lazy(optax.adam(1e-3)))" in str(error.value)


@pytest.mark.parametrize(
    "hidden",
    [
        lambda: optax.chain(optax.clip(1.0), lookahead(optax.sgd(0.1))),
        lambda: optax.MultiSteps(
            lookahead(optax.sgd(0.1)), 2
        ).gradient_transformation(),
    ],
    ids=["chain", "multisteps"],
)
@pytest.mark.parametrize("wrapper", [lazy_mask, sparse_lazy])
def test_a_hidden_lookahead_is_refused_at_init(hidden, wrapper):
    tx = wrapper(hidden())
    with pytest.raises(ValueError, match="put it inside"):
        tx.init({"embedding": jnp.ones((3, 2))})


@pytest.mark.parametrize("as_transformation", [False, True])
def test_lazy_mask_around_multisteps_is_refused_at_init(as_transformation):
    multi = optax.MultiSteps(optax.sgd(1.0), every_k_schedule=2)
    inner = multi.gradient_transformation() if as_transformation else multi
    tx = lazy_mask(inner)
    with pytest.raises(ValueError, match=r"MultiSteps outside.*MultiSteps\(lazy_mask"):
        tx.init({"embedding": jnp.ones((3, 2))})
    # The working order.
    optax.MultiSteps(lazy_mask(optax.sgd(1.0)), 2).init({"embedding": jnp.ones((3, 2))})


@pytest.mark.parametrize("jit", [False, True])
def test_an_axis_name_outside_any_map_is_named(jit):
    tx = lazy_mask(optax.sgd(1.0), axis_name="data")
    params = {"embedding": jnp.ones((3, 2))}
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(ValueError, match=r"axis_name='data'.*pmap or shard_map"):
        update(params, tx.init(params), params)


@pytest.mark.parametrize("flag", ["no", 1, 0.0])
def test_a_mask_leaf_that_is_not_a_bool_is_refused(flag):
    tx = lazy_mask(optax.sgd(1.0), mask={"embedding": True, "bias": flag})
    with pytest.raises(TypeError, match="mask's leaves must be True or False"):
        tx.init({"embedding": jnp.ones((3, 2)), "bias": jnp.ones(2)})


def test_mask_that_selects_nothing():
    tx = lazy_mask(optax.sgd(0.1))
    with pytest.raises(ValueError, match="selects no parameter.*mask="):
        tx.init({"kernel": jnp.ones((3, 2))})


def test_mask_that_selects_a_scalar():
    tx = lazy_mask(optax.sgd(0.1), mask={"embedding": True, "bias": True})
    with pytest.raises(ValueError, match=r"\['bias'\], a scalar"):
        tx.init({"embedding": jnp.ones((3, 2)), "bias": jnp.ones(())})


def test_params_without_leaves_are_refused_at_init():
    with pytest.raises(ValueError, match="selects no parameter"):
        lazy_mask(optax.adam(0.1)).init({})


def test_mask_that_does_not_match_the_params():
    tx = lazy_mask(optax.sgd(0.1), mask={"embedding": True, "other": False})
    with pytest.raises(ValueError, match="mask.*does not match the params"):
        tx.init({"embedding": jnp.ones((3, 2))})


def test_bad_sampled_rows():
    params = {"embedding": jnp.ones((4, 2))}
    tx = lazy_mask(optax.sgd(0.1))
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"sampled_rows for \['embedding'\].*\(4,\)"):
        tx.update(params, state, params, sampled_rows=jnp.ones(3, jnp.bool_))
    with pytest.raises(TypeError, match="sampled_rows.*float32"):
        tx.update(params, state, params, sampled_rows=jnp.ones(4))
    with pytest.raises(ValueError, match="sampled_rows.*does not match"):
        tx.update(params, state, params, sampled_rows={"other": jnp.arange(2)})


def test_freeze_state_needs_state_that_mirrors_params():
    """An inner state with one entry per column cannot be frozen by row."""

    def init(params):
        return jax.tree.map(lambda p: jnp.zeros(p.shape[1:], p.dtype), params)

    def update(updates, state, params=None):
        return updates, jax.tree.map(lambda s, u: s + u.sum(0), state, updates)

    tx = lazy_mask(optax.GradientTransformation(init, update), freeze_state=True)
    params = {"embedding": jnp.ones((4, 3))}
    with pytest.raises(
        ValueError, match=r"freeze_state=True\) keeps.*\(3,\).*freeze_state=False"
    ):
        tx.init(params)


def test_slow_params_without_or_with_two_lookaheads():
    params = jnp.ones(2)
    with pytest.raises(ValueError, match="no LookaheadState"):
        slow_params(optax.adam(0.1).init(params))
    two = optax.chain(lookahead(optax.sgd(0.1)), lookahead(optax.sgd(0.1)))
    with pytest.raises(ValueError, match=r"2 LookaheadStates, at \[0\], \[1\]"):
        slow_params(two.init(params))


def test_slow_params_default_when_there_is_no_lookahead():
    params = {"w": jnp.ones(2)}
    assert slow_params(optax.adam(0.1).init(params), default=params) is params
    state = lookahead(optax.sgd(0.1)).init(params)
    assert slow_params(state, default=None) is state.slow


@pytest.mark.parametrize("sync_staging", ["cond", "select"])
def test_update_with_other_shapes_than_init(sync_staging):
    tx = lookahead(optax.sgd(0.1), sync_staging=sync_staging)
    state = tx.init(jnp.ones(1))
    with pytest.raises(ValueError, match=r"updates has shape \(5,\).*\(1,\)"):
        tx.update(jnp.ones(5), state, jnp.ones(5))
    with pytest.raises(ValueError, match=r"updates has shape \(5,\)"):
        update_and_apply(tx, jnp.ones(5), state, jnp.ones(5))


@pytest.mark.parametrize("step", ["eager", "jit", "lookahead_jit"])
def test_params_in_another_dtype_than_init_are_refused(step):
    # Mixed precision set up after init: the slow weights keep init's dtype.
    tx = lookahead(optax.sgd(0.1), sync_period=2)
    state = tx.init({"w": jnp.ones(2, jnp.float32)})
    params = {"w": jnp.ones(2, jnp.bfloat16)}
    run = partial(update_and_apply, tx)
    run = {"eager": run, "jit": jax.jit(run), "lookahead_jit": lookahead_jit(run)}
    with pytest.raises(ValueError, match=r"params\['w'\] has dtype bfloat16.*float32"):
        run[step](params, state, {"w": jnp.ones(2, jnp.bfloat16)})
    # Gradients in a narrower dtype than the params are fine.
    run[step]({"w": jnp.ones(2)}, state, {"w": jnp.ones(2, jnp.bfloat16)})


def test_update_with_another_tree_than_init():
    tx = lookahead(optax.sgd(0.1))
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="updates do not have the tree structure"):
        tx.update({"v": jnp.ones(2)}, state, {"v": jnp.ones(2)})
    with pytest.raises(ValueError, match="params do not have the tree structure"):
        tx.update({"w": jnp.ones(2)}, state, {"w": jnp.ones(2), "b": jnp.ones(1)})


def test_a_state_from_another_optimizer_is_refused():
    tx = lookahead(optax.sgd(0.1))
    with pytest.raises(ValueError, match="opt_state must be the LookaheadState"):
        tx.update(jnp.ones(2), optax.sgd(0.1).init(jnp.ones(2)), jnp.ones(2))


@pytest.mark.parametrize("num_rows", [None, 8.0, 0, True])
def test_sparse_rows_needs_a_row_count(num_rows):
    with pytest.raises((TypeError, ValueError), match="num_rows"):
        sparse_rows(jnp.array([1]), jnp.ones((1, 2)), num_rows=num_rows)
