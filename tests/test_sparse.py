"""sparse_lazy: the frozen lazy optimizer at a cost that follows the sampled rows."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import hlo_bytes
from optax_lookahead import (
    SparseRows,
    gather_rows,
    lazy_mask,
    lookahead,
    slow_params,
    sparse_lazy,
    sparse_rows,
    update_and_apply,
)
from optax_lookahead.flax import SparseEmbed, sparse_embed_grads
from tests.helpers import assert_trees_close, standard_promotion

ROWS, DIM = 50, 4


def test_sparse_rows_sums_repeats_and_drops_padding():
    ids = jnp.array([[4, 9, 4], [-1, 9, 50]])
    grads = jnp.arange(6 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    rows = sparse_rows(ids, grads, num_rows=ROWS)
    assert rows.ids.shape == (6,) and rows.values.shape == (6, 2)
    np.testing.assert_array_equal(rows.ids, [4, 9, ROWS, ROWS, ROWS, ROWS])
    np.testing.assert_array_equal(rows.values[0], grads[0, 0] + grads[0, 2])
    np.testing.assert_array_equal(rows.values[1], grads[0, 1] + grads[1, 1])
    np.testing.assert_array_equal(rows.values[2:], 0)


def lookup_problem(steps, seed=0, per_step=6):
    """Per step: ids looked up (with repeats) and their row gradients."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps):
        ids = rng.integers(0, 30, size=per_step)  # rows 30.. never sampled
        row_grads = rng.normal(size=(per_step, DIM)).astype(np.float32)
        dense = np.zeros((ROWS, DIM), np.float32)
        np.add.at(dense, ids, row_grads)
        batches.append((jnp.asarray(ids), jnp.asarray(row_grads), jnp.asarray(dense)))
    params = {
        "embedding": jnp.asarray(rng.normal(size=(ROWS, DIM)), jnp.float32),
        "kernel": jnp.asarray(rng.normal(size=(DIM, 3)), jnp.float32),
    }
    kernel_grads = [
        jnp.asarray(rng.normal(size=(DIM, 3)), jnp.float32) for _ in range(steps)
    ]
    return params, batches, kernel_grads


def run_pair(sparse_tx, dense_tx, steps=8, seed=0):
    """Runs the sparse and the dense formulation side by side, jitted, donated."""
    params, batches, kernel_grads = lookup_problem(steps, seed)
    step = jax.jit(update_and_apply, static_argnums=0, donate_argnums=(1, 2))
    sparse_params = jax.tree.map(jnp.copy, params)
    sparse_state = sparse_tx.init(sparse_params)
    dense_params = jax.tree.map(jnp.copy, params)
    dense_state = dense_tx.init(dense_params)
    for (ids, row_grads, dense_rows), kernel in zip(batches, kernel_grads):
        rows = sparse_rows(ids, row_grads, num_rows=ROWS)
        sparse_params, sparse_state = step(
            sparse_tx,
            sparse_params,
            sparse_state,
            {"embedding": rows, "kernel": kernel},
        )
        dense_params, dense_state = step(
            dense_tx,
            dense_params,
            dense_state,
            {"embedding": dense_rows, "kernel": kernel},
        )
    return params, sparse_params, sparse_state, dense_params, dense_state


@pytest.mark.parametrize(
    "make_inner",
    [
        lambda: standard_promotion(optax.adam(0.05)),
        lambda: standard_promotion(optax.adamw(0.05, weight_decay=0.3)),
        lambda: optax.sgd(0.05, momentum=0.9),
        lambda: optax.adagrad(0.1),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.rmsprop(0.01)),
    ],
    ids=["adam", "adamw", "momentum", "adagrad", "clip+rmsprop"],
)
def test_equals_lazy_mask_with_frozen_state(make_inner):
    start, sparse_params, sparse_state, dense_params, dense_state = run_pair(
        sparse_lazy(make_inner()), lazy_mask(make_inner(), freeze_state=True)
    )
    assert_trees_close(sparse_params, dense_params, rtol=1e-5, atol=1e-6)
    assert_trees_close(
        sparse_state.inner_state, dense_state.inner_state, rtol=1e-5, atol=1e-6
    )
    # Rows 30.. were never sampled: params and every state row untouched.
    np.testing.assert_array_equal(
        sparse_params["embedding"][30:], start["embedding"][30:]
    )
    initial = make_inner().init(start)
    for new, old in zip(
        jax.tree.leaves(sparse_state.inner_state), jax.tree.leaves(initial)
    ):
        if new.shape == (ROWS, DIM):
            np.testing.assert_array_equal(new[30:], old[30:])


@pytest.mark.parametrize("on_sync", ["keep", "pullback"])
def test_lookahead_of_sparse_equals_lookahead_of_lazy_mask(sync_strategy, on_sync):
    def build(inner):
        return lookahead(
            inner, sync_period=3, slow_step_size=0.5, inner_state_on_sync=on_sync
        )

    _, sparse_params, sparse_state, dense_params, dense_state = run_pair(
        build(sparse_lazy(standard_promotion(optax.adam(0.05)))),
        build(lazy_mask(standard_promotion(optax.adam(0.05)), freeze_state=True)),
        steps=10,
    )
    assert_trees_close(sparse_params, dense_params, rtol=1e-5, atol=1e-6)
    assert_trees_close(slow_params(sparse_state), slow_params(dense_state), rtol=1e-5)


def test_plain_lookahead_update_with_sparse_rows_says_what_to_use():
    params = {"embedding": jnp.zeros((ROWS, DIM))}
    tx = lookahead(sparse_lazy(optax.sgd(0.1)))
    grads = {"embedding": sparse_rows(jnp.array([1]), jnp.ones((1, DIM)), ROWS)}
    with pytest.raises(ValueError, match="update_and_apply"):
        tx.update(grads, tx.init(params), params)


def test_bad_sparse_rows():
    with pytest.raises(TypeError, match="ids must be integers"):
        sparse_rows(jnp.ones(3), jnp.ones((3, 2)), 5)
    with pytest.raises(ValueError, match=r"ids.shape \+ row_shape"):
        sparse_rows(jnp.arange(3), jnp.ones((4, 2)), 5)
    tx = sparse_lazy(optax.sgd(0.1))
    params = {"embedding": jnp.zeros((5, 3))}
    wrong = {"embedding": SparseRows(jnp.arange(2), jnp.ones((2, 4)))}
    with pytest.raises(ValueError, match=r"\['embedding'\].*rows of shape \(4,\)"):
        tx.update(wrong, tx.init(params), params)


def test_compiled_step_moves_bytes_in_proportion_to_the_rows():
    """The sparse step's program touches the sampled rows, not the table: no
    table-size copy, and the bytes it moves (scatters counted in place, see
    benchmarks/hlo_bytes.py) are a few percent of a dense Adam step's."""
    table = {"embedding": jnp.zeros((100_000, 64))}
    ids = jnp.arange(0, 100_000, 100)  # 1,000 rows, 1%
    grads = {"embedding": sparse_rows(ids, jnp.ones((ids.size, 64)), 100_000)}
    dense_grads = {"embedding": jnp.zeros((100_000, 64)).at[ids].set(1.0)}

    def compiled_text(tx, grads):
        state = tx.init(table)
        return (
            jax.jit(update_and_apply, static_argnums=0, donate_argnums=(1, 2))
            .lower(tx, table, state, grads)
            .compile()
            .as_text()
        )

    sparse = compiled_text(sparse_lazy(standard_promotion(optax.adam(1e-3))), grads)
    dense = compiled_text(standard_promotion(optax.adam(1e-3)), dense_grads)
    assert hlo_bytes.path_copies(sparse, 0, {"f32[100000,64]"}) == 0
    sparse_bytes, dense_bytes = (
        hlo_bytes.path_bytes(sparse, 0),
        hlo_bytes.path_bytes(dense, 0),
    )
    assert sparse_bytes < 0.05 * dense_bytes, (sparse_bytes, dense_bytes)


class SparseClassifier(nn.Module):
    embed: type = SparseEmbed

    @nn.compact
    def __call__(self, words):
        pooled = self.embed(ROWS, DIM, name="embed")(words).mean(axis=1)
        return nn.Dense(1, name="dense")(pooled)[:, 0]


def test_flax_sparse_embed_gives_the_dense_gradient_rows():
    words = jnp.array([[1, 2, 2, 7], [7, 7, 3, 49]])
    labels = jnp.array([1.0, 0.0])
    sparse_model = SparseClassifier()
    dense_model = SparseClassifier(embed=nn.Embed)
    variables = sparse_model.init(jax.random.key(0), words)
    params = variables["params"]

    def sparse_loss(params, perturbations):
        logits = sparse_model.apply(
            {"params": params, "perturbations": perturbations}, words
        )
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    def dense_loss(params):
        logits = dense_model.apply({"params": params}, words)
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    with jax.numpy_dtype_promotion("standard"):
        grads, perturbation_grads = jax.grad(sparse_loss, argnums=(0, 1))(
            params, jax.tree.map(jnp.zeros_like, variables["perturbations"])
        )
        dense = jax.grad(dense_loss)(params)
    grads = sparse_embed_grads(grads, perturbation_grads, words)
    rows = grads["embed"]["embedding"]
    assert isinstance(rows, SparseRows)
    rebuilt = jnp.zeros((ROWS, DIM)).at[rows.ids].add(rows.values, mode="drop")
    np.testing.assert_allclose(
        rebuilt, dense["embed"]["embedding"], rtol=1e-6, atol=1e-8
    )
    assert_trees_close(grads["dense"], dense["dense"], rtol=1e-6)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
def test_pmap_gathers_rows_across_devices():
    params, batches, kernel_grads = lookup_problem(steps=5, per_step=16)
    tx = sparse_lazy(standard_promotion(optax.adam(0.05)))

    @partial(jax.pmap, axis_name="data")
    def step(params, state, ids, row_grads, kernel):
        # Each device looked up its own ids; gather them all, then combine:
        # every replica applies the same (mean) sparse gradient.
        all_ids = jax.lax.all_gather(ids, "data")
        all_grads = jax.lax.all_gather(row_grads, "data") / jax.lax.psum(1, "data")
        rows = sparse_rows(all_ids, all_grads, num_rows=ROWS)
        kernel = jax.lax.pmean(kernel, "data")
        return update_and_apply(
            tx, params, state, {"embedding": rows, "kernel": kernel}
        )

    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * 8), tree)
    replicated, state = replicate(params), replicate(tx.init(params))
    single, single_state = params, tx.init(params)
    for (ids, row_grads, _), kernel in zip(batches, kernel_grads):
        # 16 lookups per step, two on each device.
        replicated, state = step(
            replicated,
            state,
            ids.reshape(8, 2),
            row_grads.reshape(8, 2, DIM),
            jnp.stack([kernel] * 8),
        )
        mean = sparse_rows(ids, row_grads / 8, num_rows=ROWS)
        single, single_state = update_and_apply(
            tx, single, single_state, {"embedding": mean, "kernel": kernel}
        )
    for leaf in jax.tree.leaves(replicated):
        for replica in range(1, 8):
            np.testing.assert_array_equal(leaf[replica], leaf[0])
    assert_trees_close(jax.tree.map(lambda x: x[0], replicated), single, rtol=1e-6)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
def test_row_sharded_table_under_jit():
    mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
    params, batches, kernel_grads = lookup_problem(steps=4)
    params = {"embedding": jnp.zeros((48, DIM)).at[:].set(params["embedding"][:48])}
    sharded = jax.device_put(params, NamedSharding(mesh, P("rows", None)))
    tx = sparse_lazy(standard_promotion(optax.adam(0.05)))
    step = jax.jit(update_and_apply, static_argnums=0, donate_argnums=(1, 2))
    state, sharded_state = tx.init(params), tx.init(sharded)
    layout = sharded["embedding"].sharding
    for ids, row_grads, _ in batches:
        grads = {"embedding": sparse_rows(ids, row_grads, num_rows=48)}
        params, state = step(tx, params, state, grads)
        sharded, sharded_state = step(tx, sharded, sharded_state, grads)
    assert_trees_close(sharded, params, rtol=1e-6)
    assert sharded["embedding"].sharding.is_equivalent_to(layout, 2)
    mu = sharded_state.inner_state[0].mu["embedding"]
    assert mu.sharding.is_equivalent_to(sharded["embedding"].sharding, 2)


def test_negative_padding_ids_read_zero_rows_and_move_nothing():
    table = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(
        gather_rows(table, jnp.array([[1, -1], [4, -7]])),
        [[[3.0, 4.0, 5.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
    )
    tx = sparse_lazy(optax.sgd(1.0))
    params = {"embedding": table}
    ids = jnp.array([1, -1, -1])
    grads = {"embedding": sparse_rows(ids, jnp.ones((3, 3)), num_rows=4)}
    params, _ = update_and_apply(tx, params, tx.init(params), grads)
    moved = np.flatnonzero(np.any(np.asarray(params["embedding"]) != table, axis=1))
    np.testing.assert_array_equal(moved, [1])  # not the last row


def test_sparse_embed_grads_names_a_perturbation_without_its_table():
    grads = {"dense": {"kernel": jnp.ones((2, 2))}}
    perturbations = {"embed": {"rows": jnp.ones((3, DIM))}}
    with pytest.raises(ValueError, match=r"\('embed',\)"):
        sparse_embed_grads(grads, perturbations, jnp.arange(3))
