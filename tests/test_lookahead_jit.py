"""lookahead_jit: one program per phase, chosen on the host from the state.

The oracles: the NumPy loop of the paper's algorithm, and the same function
under plain ``jax.jit`` (the in-graph form). Programs are checked by what they
compile to (bytes accessed and copies), never by time.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

from optax_lookahead import (
    LookaheadState,
    _lookahead_jit,
    lazy_mask,
    lookahead,
    lookahead_jit,
    slow_params,
    sparse_lazy,
    sparse_rows,
    update_and_apply,
)
from optax_lookahead.flax import LookaheadTrainState
from tests import oracles
from tests.helpers import assert_trees_close, quadratic_problem
from tests.test_lookahead import assert_matches_oracle
from tests.test_sparse import adam


def plain_step(tx):
    def train_step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return train_step


def fused_step(tx):
    def train_step(params, opt_state, grads):
        return update_and_apply(tx, params, opt_state, grads)

    return train_step


@pytest.fixture
def host_reads(monkeypatch):
    """Counts how often lookahead_jit reads a step count from the device."""
    reads = []
    read = _lookahead_jit._read

    def counting_read(step):
        reads.append(step)
        return read(step)

    monkeypatch.setattr(_lookahead_jit, "_read", counting_read)
    return reads


@pytest.mark.parametrize("make_step", [plain_step, fused_step])
@pytest.mark.parametrize("on_sync", ["keep", "reset", "pullback"])
@pytest.mark.parametrize("sync_period", [1, 2, 5])
def test_matches_numpy_loop_of_the_paper(make_step, on_sync, sync_period):
    params, grad_fn, np_grad_fn, np_params = quadratic_problem([(3, 2), (4,)], 3)
    tx = lookahead(adam(), sync_period, 0.6, on_sync)
    train_step = lookahead_jit(make_step(tx))
    opt_state = tx.init(params)
    history = []
    for _ in range(11):
        params, opt_state = train_step(params, opt_state, grad_fn(params))
        history.append((params, slow_params(opt_state)))
    expected = oracles.lookahead_trajectory(
        oracles.NumpyAdam(0.05), np_params, np_grad_fn, sync_period, 0.6, 11, on_sync
    )
    assert_matches_oracle(history, expected)


@pytest.mark.parametrize("make_step", [plain_step, fused_step])
def test_matches_the_in_graph_form_and_compiles_three_programs(make_step, host_reads):
    schedule = optax.linear_schedule(0.3, 0.9, 20)
    tx = lookahead(adam(), 3, schedule, "pullback")
    traces = []

    def counted(*args):
        traces.append(1)
        return make_step(tx)(*args)

    fast, reference = lookahead_jit(counted, donate_argnums=(0, 1)), jax.jit(counted)
    params, grad_fn, _, _ = quadratic_problem([(5, 3), (2,)], 11)
    state = tx.init(params)
    ours, theirs = (params, state), jax.tree.map(jnp.copy, (params, state))
    for _ in range(13):
        ours = fast(*ours, grad_fn(ours[0]))
        theirs = reference(*theirs, grad_fn(theirs[0]))
        assert_trees_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # first, sync, between syncs; and one in-graph program for the reference.
    assert len(traces) == 4
    assert len(host_reads) == 1  # each call's count is known from the last one


def test_between_syncs_the_program_is_the_inner_optimizers():
    inner = adam(1e-3)
    tx = lookahead(inner, sync_period=5)
    params = {"w": jnp.zeros((256, 128)), "b": jnp.zeros((128,))}
    grads = jax.tree.map(jnp.ones_like, params)

    def compiled(lowered):
        program = lowered.compile()
        return program.cost_analysis()["bytes accessed"], program.as_text()

    inner_bytes, _ = compiled(
        jax.jit(plain_step(inner), donate_argnums=(0, 1)).lower(
            params, inner.init(params), grads
        )
    )
    for make_step in (plain_step, fused_step):
        train_step = lookahead_jit(make_step(tx), donate_argnums=(0, 1))
        state = tx.init(params)
        state = state._replace(step=jnp.asarray(1, jnp.int32))  # between syncs
        bytes_accessed, text = compiled(train_step.lower(params, state, grads))
        assert bytes_accessed <= 1.01 * inner_bytes
        assert " copy(" not in text and "conditional" not in text
        sync_state = state._replace(step=jnp.asarray(4, jnp.int32))
        sync_bytes, text = compiled(train_step.lower(params, sync_state, grads))
        assert "conditional" not in text
        # The sync reads and writes params and slow weights once more.
        assert sync_bytes <= 1.5 * inner_bytes


def test_resumes_mid_period_from_a_checkpoint(host_reads):
    tx = lookahead(adam(), sync_period=4)
    train_step = lookahead_jit(plain_step(tx))
    params, grad_fn, _, _ = quadratic_problem([(4, 2)], 5)
    state = tx.init(params)
    uninterrupted = (params, state)
    for _ in range(10):
        uninterrupted = train_step(*uninterrupted, grad_fn(uninterrupted[0]))
    resumed = (params, state)
    for i in range(10):
        if i in (3, 6):  # a checkpoint written and read back as NumPy arrays
            resumed = jax.tree.map(np.asarray, resumed)
            resumed = jax.tree.map(jnp.asarray, resumed)
        resumed = train_step(*resumed, grad_fn(resumed[0]))
    assert_trees_close(resumed, uninterrupted, rtol=0, atol=0)
    assert len(host_reads) == 4  # each loop's first call, and the two restores


def test_a_state_built_inside_the_function_falls_back_to_in_graph():
    """MultiSteps runs the update in a lax.cond: right, with a warning."""
    tx = optax.MultiSteps(lookahead(adam(), sync_period=2), every_k_schedule=2)
    params, grad_fn, _, _ = quadratic_problem([(3,)], 2)
    reference = jax.jit(plain_step(tx))
    fast = lookahead_jit(plain_step(tx))
    ours, theirs = (params, tx.init(params)), (params, tx.init(params))
    # optax.MultiSteps itself is not clean under strict promotion.
    with jax.numpy_dtype_promotion("standard"):
        with pytest.warns(UserWarning, match="in-graph sync"):
            for _ in range(9):
                ours = fast(*ours, grad_fn(ours[0]))
                theirs = reference(*theirs, grad_fn(theirs[0]))
    assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("donate", [False, True])
def test_a_static_flag_that_skips_the_update_keeps_the_period(donate):
    """Gradient accumulation by hand: jit keeps one trace per flag value in a
    program, so what the program learns about the step must hold for both."""
    tx = lookahead(optax.sgd(1.0), sync_period=4, slow_step_size=0.5)

    def micro_step(carry, grad, apply):
        params, state, accumulated = carry
        accumulated = accumulated + grad
        if apply:
            updates, state = tx.update(accumulated, state, params)
            params = optax.apply_updates(params, updates)
            accumulated = jnp.zeros_like(accumulated)
        return params, state, accumulated

    def run(jit):
        kwargs = {"static_argnums": 2} | ({"donate_argnums": 0} if donate else {})
        step = jit(micro_step, **kwargs)
        params = jnp.array([0.0])
        carry = (params, tx.init(params), jnp.zeros(1))
        history = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a trace with no update is no misuse
            for _ in range(8):
                carry = step(carry, jnp.array([1.0]), False)
                carry = step(carry, jnp.array([1.0]), True)
                now = (carry[0], slow_params(carry[1]), carry[1].step)
                history.append(jax.tree.map(np.asarray, now))  # before donation
        return history

    assert_trees_close(run(lookahead_jit), run(jax.jit), rtol=0, atol=0)


def test_a_new_sync_period_traced_mid_training_syncs_on_its_own_period():
    # One step function, the optimizer static; the second optimizer's period
    # is first met at a step (5) whose phase differs from the cached program's.
    step, reference = (
        jit(update_and_apply, static_argnums=0) for jit in (lookahead_jit, jax.jit)
    )
    grads = jnp.array([1.0])
    tx_a = lookahead(optax.sgd(1.0), sync_period=2, slow_step_size=0.5)
    params, state = jnp.array([0.0]), tx_a.init(jnp.array([0.0]))
    for _ in range(2):
        params, state = step(tx_a, params, state, grads)
    tx_b = lookahead(optax.sgd(1.0), sync_period=3, slow_step_size=0.5)
    state = tx_b.init(jnp.array([10.0]))
    state = state._replace(step=jnp.asarray(5, jnp.int32), slow=jnp.array([12.0]))
    got = step(tx_b, jnp.array([10.0]), state, grads)
    want = reference(tx_b, jnp.array([10.0]), state, grads)
    assert_trees_close(got, want, rtol=0, atol=0)
    assert float(got[0][0]) == 10.5  # a sync: from 12 half way to 9


def test_a_traced_sync_period_uses_the_in_graph_sync():
    make = optax.inject_hyperparams(
        lookahead, static_args=("inner_state_on_sync", "sync_staging")
    )
    tx = make(optax.sgd(1.0), sync_period=2, slow_step_size=0.5)
    params, grad_fn, _, _ = quadratic_problem([(3,)], 6)
    ours = theirs = (params, tx.init(params))
    fast, reference = lookahead_jit(plain_step(tx)), jax.jit(plain_step(tx))
    with pytest.warns(UserWarning, match="inject_hyperparams"):
        for _ in range(5):
            ours = fast(*ours, grad_fn(ours[0]))
            theirs = reference(*theirs, grad_fn(theirs[0]))
    assert_trees_close(ours, theirs, rtol=0, atol=0)


def test_lower_with_an_abstract_state_names_the_fix():
    tx = lookahead(adam(), sync_period=2)
    params = jnp.zeros(3)
    abstract = jax.eval_shape(lambda: (params, tx.init(params), params))
    with pytest.raises(ValueError, match="ShapeDtypeStruct.*jax.jit"):
        lookahead_jit(plain_step(tx)).lower(*abstract)
    jax.jit(plain_step(tx)).lower(*abstract)  # what the message points to


def test_a_jitted_function_inside_falls_back_to_in_graph():
    tx = lookahead(adam(), sync_period=3)
    params, grad_fn, _, _ = quadratic_problem([(3,)], 4)
    inner_jit = jax.jit(plain_step(tx))
    fast = lookahead_jit(lambda p, s, g: inner_jit(p, s, g))
    ours, theirs = (params, tx.init(params)), (params, tx.init(params))
    with pytest.warns(UserWarning, match="not itself wrapped in jax.jit"):
        for _ in range(7):
            ours = fast(*ours, grad_fn(ours[0]))
            theirs = inner_jit(*theirs, grad_fn(theirs[0]))
    assert_trees_close(ours, theirs, rtol=0, atol=0)


def test_two_steps_in_one_call_stay_right():
    """The second update's state is made in the program: in-graph phase."""
    tx = lookahead(adam(), sync_period=3)
    params, grad_fn, _, _ = quadratic_problem([(3,)], 8)
    one = plain_step(tx)

    def two_steps(params, opt_state):
        params, opt_state = one(params, opt_state, grad_fn(params))
        return one(params, opt_state, grad_fn(params))

    fast, reference = lookahead_jit(two_steps), jax.jit(two_steps)
    ours, theirs = (params, tx.init(params)), (params, tx.init(params))
    for _ in range(5):
        ours, theirs = fast(*ours), reference(*theirs)
        assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_decorator_form_and_static_arguments():
    tx = lookahead(adam(), sync_period=2)

    @lookahead_jit(static_argnames="scale", donate_argnums=(0, 1))
    def train_step(params, opt_state, grads, scale):
        grads = jax.tree.map(lambda g: g * scale, grads)
        return plain_step(tx)(params, opt_state, grads)

    params = {"w": jnp.ones((3,))}
    state = tx.init(params)
    for _ in range(3):
        params, state = train_step(params, state, {"w": jnp.ones((3,))}, scale=2.0)
    assert int(state.step) == 3
    assert train_step.__name__ == "train_step"


def test_flax_train_states():
    tx = lookahead(adam(), sync_period=3)
    params, grad_fn, _, _ = quadratic_problem([(4, 2)], 9)
    plain = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    fused = LookaheadTrainState.create(apply_fn=None, params=params, tx=tx)

    def apply(state):
        return state.apply_gradients(grads=grad_fn(state.params))

    fast, reference = lookahead_jit(apply), jax.jit(apply)
    for state in (plain, fused):
        ours, theirs = state, state
        for _ in range(7):
            ours, theirs = fast(ours), reference(theirs)
        assert_trees_close(
            (ours.params, slow_params(ours.opt_state)),
            (theirs.params, slow_params(theirs.opt_state)),
            rtol=1e-6,
            atol=1e-7,
        )


def test_nnx_optimizer(host_reads):
    def make():
        model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        tx = lookahead(adam(0.1), sync_period=3)
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    def train_step(model, optimizer, x):
        grads = nnx.grad(lambda m: (m(x) ** 2).mean())(model)
        optimizer.update(model, grads)

    fast, reference = lookahead_jit(train_step, jit=nnx.jit), nnx.jit(train_step)
    ours, theirs = make(), make()
    for i in range(8):
        x = jnp.full((4, 3), float(i))
        fast(*ours, x)
        reference(*theirs, x)
    assert_trees_close(nnx.state(ours[0]), nnx.state(theirs[0]), rtol=1e-6)
    assert len(host_reads) == 1  # nnx keeps the arrays the program returned


def test_sparse_rows_through_the_fused_step():
    rows, dim = 50, 4
    tx = lookahead(sparse_lazy(adam()), sync_period=3)
    params = {"table": jnp.asarray(np.random.default_rng(0).normal(size=(rows, dim)))}
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)

    def train_step(params, opt_state, ids):
        values = jnp.ones((ids.shape[0], dim)) * ids[:, None].astype(jnp.float32)
        grads = {"table": sparse_rows(ids, values, rows)}
        return update_and_apply(tx, params, opt_state, grads)

    fast, reference = lookahead_jit(train_step), jax.jit(train_step)
    ours, theirs = (params, tx.init(params)), (params, tx.init(params))
    for i in range(8):
        ids = jnp.asarray([i, i + 1, i, -1])
        ours, theirs = fast(*ours, ids), reference(*theirs, ids)
        assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_lazy_mask_inside():
    tx = lookahead(lazy_mask(adam()), sync_period=2)
    params = {"embedding": jnp.ones((6, 2))}
    grads = {"embedding": jnp.zeros((6, 2)).at[1].set(1.0)}
    train_step = lookahead_jit(plain_step(tx))
    state = tx.init(params)
    for _ in range(4):
        params, state = train_step(params, state, grads)
    untouched = np.delete(np.asarray(params["embedding"]), 1, axis=0)
    np.testing.assert_array_equal(untouched, 1.0)


def test_refuses_calls_it_cannot_serve():
    tx = lookahead(adam(), sync_period=2)
    params = {"w": jnp.ones((2,))}
    with pytest.raises(TypeError, match="fun must be callable"):
        lookahead_jit(3)
    with pytest.raises(TypeError, match="jit must be"):
        lookahead_jit(plain_step(tx), jit="jax.jit")
    with pytest.raises(ValueError, match="none of the arguments holds a Lookahead"):
        lookahead_jit(lambda p: p)(params)
    state = tx.init(params)
    other = state._replace(step=jnp.asarray(1, jnp.int32))
    with pytest.raises(ValueError, match=r"different step counts \[0, 1\]"):
        lookahead_jit(lambda a, b: a.step)(state, other)
    with pytest.raises(ValueError, match="call it from Python"):
        jax.jit(lookahead_jit(plain_step(tx)))(params, state, params)


def test_replicas_that_disagree_are_refused():
    state = LookaheadState(np.asarray([3, 4], np.int32), {}, ())
    with pytest.raises(ValueError, match=r"disagree on the step count \(\[3, 4\]\)"):
        lookahead_jit(lambda s: s.step)(state)


def test_no_warning_on_the_usual_loop():
    tx = lookahead(adam(), sync_period=2)
    params = {"w": jnp.ones((2,))}
    state = tx.init(params)
    train_step = lookahead_jit(plain_step(tx))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            params, state = train_step(params, state, params)
