"""lookahead(sparse_lazy(...)) syncs only the rows touched since the last sync.

The oracle is the dense formulation, lookahead(lazy_mask(..., freeze_state=
True)) on the dense gradient, whose sync interpolates every row; a row that no
step touched has fast == slow there, so the two must agree on every row.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import hlo_bytes
from optax_lookahead import (
    SparseRows,
    _touched_rows,
    lazy_mask,
    lookahead,
    lookahead_jit,
    slow_params,
    sparse_lazy,
    sparse_rows,
    update_and_apply,
)
from tests.test_sparse import adam, dense_gradient

ROWS, DIM = 40, 3


@functools.cache
def steps(sync_period, on_sync):
    """The sparse and the dense lookahead, and their jitted fused steps.

    Cached, so that examples with the same arguments reuse the compiled steps.
    """
    sparse_tx = lookahead(sparse_lazy(adam()), sync_period, 0.5, on_sync)
    dense_tx = lookahead(
        lazy_mask(adam(), freeze_state=True), sync_period, 0.5, on_sync
    )
    return (
        sparse_tx,
        dense_tx,
        jax.jit(functools.partial(update_and_apply, sparse_tx)),
        jax.jit(functools.partial(update_and_apply, dense_tx)),
    )


def run_both(
    ids_per_step,
    sync_period,
    on_sync="keep",
    seed=0,
    buffer=None,
    dense_at=(),
    rows=ROWS,
):
    """Sparse and dense lookahead over the same id buffers; final states.

    With ``buffer``, every step's ids are padded with -1 to that many. At the
    steps in ``dense_at`` both get a dense gradient for every row instead.
    """
    rng = np.random.default_rng(seed)
    params = {"embedding": jnp.asarray(rng.normal(size=(rows, DIM)), jnp.float32)}
    sparse_tx, dense_tx, sparse_step, dense_step = steps(sync_period, on_sync)
    sparse = (jax.tree.map(jnp.copy, params), sparse_tx.init(params))
    dense = (jax.tree.map(jnp.copy, params), dense_tx.init(params))
    for step, ids in enumerate(ids_per_step):
        if step in dense_at:
            values = rng.normal(size=(rows, DIM)).astype(np.float32)
            grads = {"embedding": jnp.asarray(values)}
            sparse, dense = sparse_step(*sparse, grads), dense_step(*dense, grads)
            continue
        if buffer is not None:
            ids = list(ids) + [-1] * (buffer - len(ids))
        ids = np.asarray(ids, np.int32)
        values = rng.normal(size=(ids.size, DIM)).astype(np.float32)
        update = sparse_rows(jnp.asarray(ids), jnp.asarray(values), rows)
        sparse = sparse_step(*sparse, {"embedding": update})
        dense = dense_step(*dense, {"embedding": dense_gradient(ids, values, rows)})
    return params, sparse, dense


def assert_agree(sparse, dense):
    (sparse_params, sparse_state), (dense_params, dense_state) = sparse, dense
    chex.assert_trees_all_close(sparse_params, dense_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        slow_params(sparse_state), slow_params(dense_state), rtol=1e-5, atol=1e-6
    )


id_buffers = st.lists(
    st.lists(st.integers(-2, ROWS + 2), min_size=1, max_size=25),
    min_size=1,
    max_size=9,
)


@given(ids_per_step=id_buffers, sync_period=st.integers(1, 4), seed=st.integers(0, 9))
def test_equals_a_sync_of_every_row(ids_per_step, sync_period, seed):
    """Padding, repeats, ids past the end (buffers of one size: one compile)."""
    _, sparse, dense = run_both(ids_per_step, sync_period, seed=seed, buffer=25)
    assert_agree(sparse, dense)


@pytest.mark.parametrize(
    ("sync_period", "dense_at"), [(2, 0), (3, 0), (3, 1), (3, 3), (4, 2)]
)
def test_a_dense_step_makes_the_next_sparse_sync_move_every_row(sync_period, dense_at):
    """A table's gradient may come dense at some step: every row moves then."""
    ids = [[1, 5], [5, 9], [2], [7, 7], [0], [3, 8]][: 2 * sync_period]
    _, sparse, dense = run_both(ids, sync_period, buffer=2, dense_at={dense_at})
    assert_agree(sparse, dense)


@given(
    ids_per_step=id_buffers,
    dense_at=st.sets(st.integers(0, 8), min_size=1),
    sync_period=st.integers(1, 4),
)
def test_dense_and_sparse_steps_mixed_equal_a_sync_of_every_row(
    ids_per_step, dense_at, sync_period
):
    _, sparse, dense = run_both(ids_per_step, sync_period, buffer=25, dense_at=dense_at)
    assert_agree(sparse, dense)


def test_dense_steps_through_tx_update_are_synced_by_a_sparse_sync():
    # tx.update (dense gradients only) and the fused sparse step, mixed in one
    # period: the sparse sync must also move the rows the dense step moved.
    tx = lookahead(sparse_lazy(optax.sgd(1.0)), sync_period=2, slow_step_size=0.5)
    params = {"embedding": jnp.zeros((4, 1))}
    state = tx.init(params)
    updates, state = tx.update({"embedding": jnp.ones((4, 1))}, state, params)
    params = optax.apply_updates(params, updates)
    grads = {"embedding": sparse_rows(jnp.array([0]), jnp.ones((1, 1)), num_rows=4)}
    params, state = update_and_apply(tx, params, state, grads)
    # Fast weights -2, -1, -1, -1; the slow weights move half way from 0.
    want = jnp.array([[-1.0], [-0.5], [-0.5], [-0.5]])
    chex.assert_trees_all_equal(params["embedding"], want)
    chex.assert_trees_all_equal(slow_params(state)["embedding"], want)
    assert not state.touched_rows["embedding"].every_row


def test_a_period_that_touched_more_rows_than_one_round_takes_several():
    # The sync step names one id, so a round covers MIN_ROWS_PER_ROUND rows
    # (of 12 bytes each); the period touched 1,502 of 3,000 rows: two rounds,
    # the second partial.
    assert _touched_rows.MIN_ROWS_PER_ROUND == 1024
    ids = [list(range(0, 3000, 2)), [2001], [2003]]
    _, sparse, dense = run_both(ids, sync_period=3, rows=3000)
    assert_agree(sparse, dense)


def test_after_a_dense_step_a_sync_with_few_ids_sweeps_in_large_rounds():
    # Every row is pending after the dense step: three rounds of 1,024 rows
    # (the last partial) for 2,500 rows, not 2,500 rounds of the step's id.
    _, sparse, dense = run_both([[], [7], [9]], sync_period=3, dense_at={0}, rows=2500)
    assert_agree(sparse, dense)
    tx = lookahead(sparse_lazy(adam()), sync_period=3)
    params = {"embedding": jnp.zeros((2500, DIM))}
    grads = {"embedding": sparse_rows(jnp.array([7]), jnp.ones((1, DIM)), 2500)}
    jaxpr = jax.make_jaxpr(functools.partial(update_and_apply, tx))(
        params, tx.init(params), grads
    )
    assert sync_round_sizes(jaxpr.jaxpr) == {1024}


@pytest.mark.parametrize(("width", "rows_per_round"), [(2**18, 4), (2**20, 1)])
def test_a_table_of_wide_rows_syncs_in_rounds_of_at_most_4_mib(width, rows_per_round):
    # 1 MiB and 4 MiB rows (float32): 1,024 of them would be 1 and 4 GiB.
    tx = lookahead(sparse_lazy(optax.sgd(1.0)), sync_period=3)
    params = {"embedding": jax.ShapeDtypeStruct((8, width), jnp.float32)}
    grads = {"embedding": sparse_rows(jnp.array([7]), jnp.ones((1, width)), 8)}
    state = jax.eval_shape(tx.init, params)
    jaxpr = jax.make_jaxpr(functools.partial(update_and_apply, tx))(
        params, state, grads
    )
    assert sync_round_sizes(jaxpr.jaxpr) == {rows_per_round}


def sync_round_sizes(jaxpr) -> set:
    """The number of rows each while loop in ``jaxpr`` gathers per round."""
    sizes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            body = eqn.params["body_jaxpr"].jaxpr
            sizes |= {
                inner.outvars[0].aval.shape[0]
                for inner in body.eqns
                if inner.primitive.name == "gather"
            }
        for value in eqn.params.values():  # nested: pjit, cond branches, loops
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    sizes |= sync_round_sizes(sub)
    return sizes


@pytest.mark.parametrize("on_sync", ["keep", "reset", "pullback"])
def test_every_option_for_the_inner_state(on_sync):
    ids = [[1, 2, -1], [2, 5, 5], [7, 1, 0], [9, 9, 9], [3, 4, 6]]
    _, sparse, dense = run_both(ids, sync_period=2, on_sync=on_sync)
    assert_agree(sparse, dense)


def listed(record):
    return np.asarray(record.ids)[: int(record.num_touched)]


def test_the_record_lists_the_touched_rows_and_empties_at_a_sync():
    _, (_, state), _ = run_both([[1, 4, -1], [4, 7, ROWS]], sync_period=3)
    np.testing.assert_array_equal(
        np.sort(listed(state.touched_rows["embedding"])), [1, 4, 7]
    )
    _, (_, state), _ = run_both([[1, 4], [4, 7], [9, 9]], sync_period=3)
    assert int(state.touched_rows["embedding"].num_touched) == 0


@given(
    periods=st.lists(
        st.lists(st.lists(st.integers(-3, 12), max_size=12), max_size=4),
        min_size=1,
        max_size=4,
    )
)
def test_note_lists_each_touched_row_once_whatever_the_ids(periods):
    """Repeats within and across steps, padding, ids past the end; and the
    stale entries an emptied record keeps from earlier periods."""
    rows = 10
    note = jax.jit(_touched_rows.note)
    record = _touched_rows.init({"t": jnp.zeros((rows, 2))})
    for period in periods:
        seen = set()
        for ids in period:
            ids = np.asarray(ids + [-1] * (12 - len(ids)), np.int32)
            update = SparseRows(jnp.asarray(ids), jnp.zeros((12, 2)), rows)
            record = note(record, {"t": update})
            seen |= {i for i in ids.tolist() if 0 <= i < rows}
        got = listed(record["t"])
        assert sorted(got.tolist()) == sorted(seen)  # each row once
        slot_of_row = np.asarray(record["t"].slot_of_row)
        np.testing.assert_array_equal(got[slot_of_row[got]], got)
        record = {"t": record["t"]._replace(num_touched=jnp.zeros((), jnp.int32))}


def test_dense_inner_optimizers_keep_no_record():
    state = lookahead(adam()).init({"w": jnp.zeros((4, 2))})
    assert state.touched_rows == ()


def test_the_sync_program_moves_no_whole_table():
    rows, dim = 20_000, 16
    tx = lookahead(sparse_lazy(adam()), sync_period=5)
    train_step = lookahead_jit(
        lambda p, s, g: update_and_apply(tx, p, s, g), donate_argnums=(0, 1)
    )
    params = {"embedding": jnp.zeros((rows, dim))}
    grads = {"embedding": sparse_rows(jnp.arange(8), jnp.ones((8, dim)), rows)}
    state = tx.init(params)
    for step in (1, 4):  # between syncs, and a sync
        state = state._replace(step=jnp.asarray(step, jnp.int32))
        text = train_step.lower(params, state, grads).compile().as_text()
        table_copies = [
            line
            for line in text.splitlines()
            if f"[{rows},{dim}]" in line and " copy(" in line
        ]
        assert not table_copies
        assert hlo_bytes.conditionals(text) == 0  # sparse_lazy's order check aside


def test_a_step_and_a_sync_move_as_many_bytes_for_a_table_ten_times_larger():
    """What lookahead adds follows the ids: nothing in either program reads the
    record or the table row by row (bytes along the compiled programs, with
    in-place scatters and gathers counted by the rows they move)."""

    def program_bytes(rows):
        tx = lookahead(sparse_lazy(adam()), sync_period=5)
        train_step = lookahead_jit(
            lambda p, s, g: update_and_apply(tx, p, s, g), donate_argnums=(0, 1)
        )
        params = {"embedding": jnp.zeros((rows, 16))}
        grads = {"embedding": sparse_rows(jnp.arange(8), jnp.ones((8, 16)), rows)}
        state = tx.init(params)
        got = []
        for step in (1, 4):  # between syncs, and a sync
            state = state._replace(step=jnp.asarray(step, jnp.int32))
            text = train_step.lower(params, state, grads).compile().as_text()
            got.append(hlo_bytes.path_bytes(text, 0))
        return got

    assert program_bytes(200_000) == program_bytes(20_000)
