"""sparse_lazy and SparseRows: the frozen lazy optimizer at a cost that follows
the sampled rows, the one padding rule for ids, and clear errors where sparse
rows meet code that cannot take them (issue 10, items 2, 3 and 4)."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from hypothesis import example, given, settings
from hypothesis import strategies as st

from benchmarks import hlo_bytes
from optax_lookahead import (
    SparseRows,
    _rows,
    apply_sparse_updates,
    gather_rows,
    lazy_mask,
    lookahead,
    slow_params,
    sparse_lazy,
    sparse_rows,
    update_and_apply,
)
from optax_lookahead.flax import SparseEmbed, sparse_embed_grads
from tests.helpers import standard_promotion

ROWS, DIM = 50, 4


def adam(learning_rate=0.05):
    return standard_promotion(optax.adam(learning_rate))


def moments(state):
    """Adam's first and second moments, wherever they sit in ``state``."""
    return optax.tree.get(state, "mu"), optax.tree.get(state, "nu")


def rows_moved(before, after) -> list:
    changed = np.any(np.asarray(after) != np.asarray(before), axis=1)
    return np.flatnonzero(changed).tolist()


def dense_gradient(ids, values, num_rows):
    """The dense table a SparseRows stands for: valid ids added up, padding dropped."""
    ids, values = np.asarray(ids), np.asarray(values)
    valid = (ids >= 0) & (ids < num_rows)
    dense = np.zeros((num_rows,) + values.shape[1:], values.dtype)
    np.add.at(dense, ids[valid], values[valid])
    return jnp.asarray(dense)


def test_sparse_rows_sums_repeats_and_drops_padding():
    ids = jnp.array([[4, 9, 4], [-1, 9, 50]])
    grads = jnp.arange(6 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    rows = sparse_rows(ids, grads, num_rows=ROWS)
    assert rows.ids.shape == (6,) and rows.values.shape == (6, 2)
    assert rows.num_rows == ROWS
    np.testing.assert_array_equal(rows.ids, [4, 9, ROWS, ROWS, ROWS, ROWS])
    np.testing.assert_array_equal(rows.values[0], grads[0, 0] + grads[0, 2])
    np.testing.assert_array_equal(rows.values[1], grads[0, 1] + grads[1, 1])
    np.testing.assert_array_equal(rows.values[2:], 0)


@pytest.mark.parametrize(
    "ids",
    [
        [1, 4, 9, ROWS, ROWS],  # increasing, padding last: not sorted again
        [1, 4, 9, -1, ROWS + 3],  # increasing, other padding
        [9, 4, 1, ROWS, ROWS],  # decreasing
        [1, ROWS, 4, 4, 9],  # padding inside, a repeat
        [4, 4, 9, ROWS, ROWS],  # non-decreasing: a repeat
    ],
)
def test_rows_in_order_or_not_give_the_dense_result(ids):
    """Rows whose ids increase skip the sort; padding slots count as zero rows
    even when they hold values, as global-norm clipping shows."""
    ids = jnp.asarray(ids)
    values = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)), jnp.float32)
    table = jnp.ones((ROWS, 2))
    inner = optax.chain(optax.clip_by_global_norm(0.5), adam())
    sparse_tx = sparse_lazy(inner)
    dense_tx = lazy_mask(inner, mask=True, freeze_state=True)
    sparse, sparse_state = table, sparse_tx.init(table)
    dense, dense_state = table, dense_tx.init(table)
    for _ in range(2):
        sparse, sparse_state = update_and_apply(
            sparse_tx, sparse, sparse_state, SparseRows(ids, values, ROWS)
        )
        dense, dense_state = update_and_apply(
            dense_tx, dense, dense_state, dense_gradient(ids, values, ROWS)
        )
    chex.assert_trees_all_close(sparse, dense, rtol=1e-6)
    rows = _rows.coalesce(SparseRows(ids, values, ROWS), ROWS)
    chex.assert_trees_all_close(
        dense_gradient(rows.ids, rows.values, ROWS), dense_gradient(ids, values, ROWS)
    )
    valid = np.asarray(rows.ids) < ROWS
    np.testing.assert_array_equal(np.asarray(rows.values)[~valid], 0)
    assert len(set(np.asarray(rows.ids)[valid].tolist())) == valid.sum()


def lookup_problem(steps, seed=0, per_step=6):
    """Per step: ids looked up (with repeats) and their row gradients."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps):
        ids = rng.integers(0, 30, size=per_step)  # rows 30.. never sampled
        row_grads = rng.normal(size=(per_step, DIM)).astype(np.float32)
        batches.append(
            (
                jnp.asarray(ids),
                jnp.asarray(row_grads),
                dense_gradient(ids, row_grads, ROWS),
            )
        )
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
    for (ids, row_grads, dense_rows), kernel in zip(batches, kernel_grads, strict=True):
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


ROW_WISE = {
    "adam": lambda: adam(),
    "adamw": lambda: standard_promotion(optax.adamw(0.05, weight_decay=0.3)),
    "momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "adagrad": lambda: optax.adagrad(0.1),
    "rmsprop": lambda: optax.rmsprop(0.01),
    "clip+adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), adam()),
}


@pytest.mark.parametrize("make_inner", ROW_WISE.values(), ids=ROW_WISE.keys())
def test_row_wise_optimizers_equal_lazy_mask_with_frozen_state(make_inner):
    start, sparse_params, sparse_state, dense_params, dense_state = run_pair(
        sparse_lazy(make_inner()), lazy_mask(make_inner(), freeze_state=True)
    )
    chex.assert_trees_all_close(sparse_params, dense_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        sparse_state.inner_state, dense_state.inner_state, rtol=1e-5, atol=1e-6
    )
    # Rows 30.. were never sampled: params and every state row untouched.
    np.testing.assert_array_equal(
        sparse_params["embedding"][30:], start["embedding"][30:]
    )
    initial = make_inner().init(start)
    for new, old in zip(
        jax.tree.leaves(sparse_state.inner_state), jax.tree.leaves(initial), strict=True
    ):
        if new.shape == (ROWS, DIM):
            np.testing.assert_array_equal(new[30:], old[30:])


@pytest.mark.parametrize("on_sync", ["keep", "pullback"])
def test_lookahead_of_sparse_equals_lookahead_of_lazy_mask(sync_staging, on_sync):
    def build(inner):
        return lookahead(
            inner,
            sync_period=3,
            slow_step_size=0.5,
            inner_state_on_sync=on_sync,
            sync_staging=sync_staging,
        )

    _, sparse_params, sparse_state, dense_params, dense_state = run_pair(
        build(sparse_lazy(adam())),
        build(lazy_mask(adam(), freeze_state=True)),
        steps=10,
    )
    chex.assert_trees_all_close(sparse_params, dense_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        slow_params(sparse_state), slow_params(dense_state), rtol=1e-5
    )


# Ids: the padding rule (issue 10, item 2).


def test_bad_sparse_rows_are_refused():
    with pytest.raises(TypeError, match="must be integer row ids"):
        sparse_rows(jnp.ones(3), jnp.ones((3, 2)), 5)
    with pytest.raises(ValueError, match=r"ids.shape \+ row_shape"):
        sparse_rows(jnp.arange(3), jnp.ones((4, 2)), 5)
    for num_rows in (None, 8.0):
        with pytest.raises(TypeError, match="num_rows"):
            sparse_rows(jnp.arange(3), jnp.ones((3, 2)), num_rows)
    tx = sparse_lazy(optax.sgd(0.1))
    params = {"embedding": jnp.zeros((5, 3))}
    wrong = {"embedding": SparseRows(jnp.arange(2), jnp.ones((2, 4)))}
    with pytest.raises(ValueError, match=r"\['embedding'\].*rows of shape \(4,\)"):
        tx.update(wrong, tx.init(params), params)


def test_minus_one_in_hand_built_rows_leaves_the_last_row_and_its_moments():
    table = jnp.ones((4, DIM))
    rows = SparseRows(jnp.array([1, -1]), jnp.ones((2, DIM)))
    assert rows_moved(table, apply_sparse_updates(table, rows)) == [1]
    tx = sparse_lazy(adam())
    params, state = update_and_apply(tx, table, tx.init(table), rows)
    assert rows_moved(table, params) == [1]
    for moment in moments(state):
        assert rows_moved(jnp.zeros_like(table), moment) == [1]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_num_rows_that_is_not_the_tables_is_refused_when_traced(jit):
    """With num_rows=5 on an 8-row table, padding would become row 5."""
    params = {"embedding": jnp.zeros((8, DIM))}
    ids = jnp.array([2, -1])
    grads = {"embedding": sparse_rows(ids, jnp.ones((2, DIM)), num_rows=5)}
    tx = sparse_lazy(standard_promotion(optax.adamw(0.1, weight_decay=0.5)))
    step = jax.jit(update_and_apply, static_argnums=0) if jit else update_and_apply
    apply = jax.jit(apply_sparse_updates) if jit else apply_sparse_updates
    with pytest.raises(ValueError, match=r"num_rows=5 for a table of 8 rows"):
        step(tx, params, tx.init(params), grads)
    with pytest.raises(ValueError, match=r"num_rows=5 for a table of 8 rows"):
        apply(params, grads)


def rows_moved_by_ids(where, ids, num_rows=4):
    """The rows of a table that move when ``where`` is given ``ids``."""
    table = {"embedding": jnp.zeros((num_rows, DIM))}
    ones = jnp.ones(ids.shape + (DIM,))
    if where == "apply_sparse_updates":
        new = apply_sparse_updates(table, {"embedding": SparseRows(ids, ones)})
    elif where == "lazy_mask":  # told the sampled rows
        tx = lazy_mask(optax.sgd(1.0))
        dense = {"embedding": jnp.ones((num_rows, DIM))}
        new, _ = update_and_apply(tx, table, tx.init(table), dense, sampled_rows=ids)
    else:  # sparse_lazy, given hand-built rows or sparse_rows' rows
        tx = sparse_lazy(optax.sgd(1.0))
        if where == "sparse_rows":
            rows = sparse_rows(ids, ones, num_rows)
        else:
            rows = SparseRows(ids, ones)
        new, _ = update_and_apply(tx, table, tx.init(table), {"embedding": rows})
    return rows_moved(table["embedding"], new["embedding"])


USES_OF_IDS = ["apply_sparse_updates", "sparse_lazy", "sparse_rows", "lazy_mask"]


@pytest.mark.parametrize("where", USES_OF_IDS)
def test_ids_outside_the_table_name_no_row(where):
    ids = jnp.array([1, -1, -7, 4, 100])
    assert rows_moved_by_ids(where, ids) == [1]


def test_gather_rows_reads_zero_rows_for_ids_outside_the_table():
    table = jnp.arange(12.0).reshape(4, 3)
    got = gather_rows(table, jnp.array([[1, -1], [4, -7]]))
    expected = jnp.zeros((2, 2, 3)).at[0, 0].set(table[1])
    chex.assert_trees_all_equal(got, expected)


def test_repeated_ids_in_hand_built_rows_move_params_and_moments_alike():
    """Params move by the summed rows, so the moments must see the sum too."""
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(6, DIM)), jnp.float32)
    ids = jnp.array([2, 4, 2, -1, 2])
    values = jnp.asarray(rng.normal(size=(5, DIM)), jnp.float32)
    sparse_tx = sparse_lazy(adam())
    dense_tx = lazy_mask(adam(), mask=True, freeze_state=True)
    sparse, sparse_state = table, sparse_tx.init(table)
    dense, dense_state = table, dense_tx.init(table)
    for _ in range(3):
        sparse, sparse_state = update_and_apply(
            sparse_tx, sparse, sparse_state, SparseRows(ids, values)
        )
        dense, dense_state = update_and_apply(
            dense_tx, dense, dense_state, dense_gradient(ids, values, 6)
        )
    chex.assert_trees_all_close(sparse, dense, rtol=1e-6)
    chex.assert_trees_all_close(moments(sparse_state), moments(dense_state), rtol=1e-6)


@pytest.mark.parametrize("where", USES_OF_IDS)
def test_int8_ids_with_minus_one_padding_index_a_300_row_table(where):
    ids = jnp.array([5, -1, 100, 100, -1], jnp.int8)
    assert rows_moved_by_ids(where, ids, num_rows=300) == [5, 100]


def test_gather_rows_takes_int8_ids_with_minus_one_padding_on_a_300_row_table():
    ids = jnp.array([5, -1, 100, -1], jnp.int8)
    np.testing.assert_array_equal(
        gather_rows(jnp.arange(300.0), ids), [5.0, 0.0, 100.0, 0.0]
    )


def enable_x64():
    """A context with 64-bit types on, or a skip where jax cannot do it locally."""
    if callable(getattr(jax, "enable_x64", None)):
        return jax.enable_x64(True)
    experimental = getattr(jax.experimental, "enable_x64", None)
    if experimental is None:
        pytest.skip("this jax cannot turn on 64-bit types in a context")
    return experimental()


# Each of these is 1 (or -1) modulo 2**32; only the last names a row.
PAST_INT32 = [2**32 + 1, 2**33 - 1, -(2**32) - 1, 2]


def assert_only_the_last_id_names_a_row(where, ids):
    if where == "gather_rows":
        table = jnp.arange(4.0, dtype=jnp.float32)
        chex.assert_trees_all_equal(
            gather_rows(table, ids), jnp.array([0, 0, 0, 2], jnp.float32)
        )
    else:
        assert rows_moved_by_ids(where, ids) == [2]


@pytest.mark.parametrize("where", ["gather_rows", *USES_OF_IDS])
def test_int64_ids_past_int32_never_wrap_into_the_table(where):
    with enable_x64():
        assert_only_the_last_id_names_a_row(where, jnp.array(PAST_INT32, jnp.int64))


@pytest.mark.parametrize("where", ["gather_rows", *USES_OF_IDS])
def test_numpy_int64_ids_past_int32_never_wrap_with_x64_off(where):
    # NumPy's default integer type under JAX's default config, where JAX itself
    # would drop the high bits: the ids are compared with the table on the host.
    assert not jax.config.jax_enable_x64
    assert_only_the_last_id_names_a_row(where, np.array(PAST_INT32, np.int64))


# SparseEmbed (issue 10, item 3).


class Classifier(nn.Module):
    """Mean of the looked-up rows, then a dense layer; padding reads zero rows."""

    embed: type = SparseEmbed

    @nn.compact
    def __call__(self, words):
        vectors = self.embed(ROWS, DIM, name="embed")(words)
        if self.embed is nn.Embed:  # the dense oracle drops padding explicitly
            inside = (words >= 0) & (words < ROWS)
            vectors = jnp.where(inside[..., None], vectors, 0.0)
        return nn.Dense(1, name="dense")(vectors.mean(axis=1))[:, 0]


def test_sparse_embed_grads_equal_the_dense_embed_gradient():
    words = jnp.array([[1, 2, 2, -1], [7, 7, 3, 49], [-1, -1, 2, ROWS]])
    labels = jnp.array([1.0, 0.0, 1.0])
    sparse_model, dense_model = Classifier(), Classifier(embed=nn.Embed)
    variables = sparse_model.init(jax.random.key(0), words)
    params = variables["params"]

    def loss(model, params, perturbations=None):
        collections = {"params": params}
        if perturbations is not None:
            collections["perturbations"] = perturbations
        logits = model.apply(collections, words)
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    with jax.numpy_dtype_promotion("standard"):  # flax and optax code
        grads, row_grads = jax.grad(partial(loss, sparse_model), argnums=(0, 1))(
            params, jax.tree.map(jnp.zeros_like, variables["perturbations"])
        )
        dense = jax.grad(partial(loss, dense_model))(params)
    grads = sparse_embed_grads(grads, row_grads, words)
    rows = grads["embed"]["embedding"]
    assert isinstance(rows, SparseRows) and rows.num_rows == ROWS
    assert sorted(rows.ids[rows.ids < ROWS].tolist()) == [1, 2, 3, 7, 49]
    rebuilt = apply_sparse_updates(jnp.zeros((ROWS, DIM)), rows)
    chex.assert_trees_all_close(
        rebuilt, dense["embed"]["embedding"], rtol=1e-6, atol=1e-8
    )
    chex.assert_trees_all_close(grads["dense"], dense["dense"], rtol=1e-6)


class Tied(nn.Module):
    @nn.compact
    def __call__(self, words):
        embed = SparseEmbed(ROWS, DIM, name="embed")
        return embed.attend(embed(words).mean(axis=1))


def test_sparse_embed_refuses_attend():
    with pytest.raises(
        ValueError, match=r"SparseEmbed.attend \(weight tying\).*flax.linen.Embed"
    ):
        Tied().init(jax.random.key(0), jnp.array([[1, 2]]))


class TwoLookups(nn.Module):
    @nn.compact
    def __call__(self, first, second):
        embed = SparseEmbed(ROWS, DIM, name="embed")
        return embed(first) + embed(second)


def test_one_sparse_embed_called_twice_is_refused_at_init():
    with pytest.raises(ValueError, match="'embed' is called more than once"):
        TwoLookups().init(jax.random.key(0), jnp.array([1]), jnp.array([2]))


def test_sparse_embed_grads_names_a_perturbation_without_its_table():
    grads = {"dense": {"kernel": jnp.ones((2, 2))}}
    perturbations = {"embed": {"rows": jnp.ones((3, DIM))}}
    with pytest.raises(ValueError, match=r"\('embed',\)"):
        sparse_embed_grads(grads, perturbations, jnp.arange(3))


def test_sparse_embed_grads_names_a_module_missing_from_the_ids_dict():
    grads = {"embed": {"embedding": jnp.ones((ROWS, DIM))}}
    perturbations = {"embed": {"rows": jnp.ones((3, DIM))}}
    for keys in ("embed", ("other",)):  # a str, not the tuple path; another
        with pytest.raises(ValueError, match=r"without the key \('embed',\)"):
            sparse_embed_grads(grads, perturbations, {keys: jnp.arange(3)})
    sparse_embed_grads(grads, perturbations, {("embed",): jnp.arange(3)})


# Optimizers that cannot run on the sampled rows alone (issue 10, item 4).


def embedding_and_kernel(rows=8):
    rng = np.random.default_rng(0)
    params = {
        "embedding": jnp.asarray(rng.normal(size=(rows, DIM)), jnp.float32),
        "kernel": jnp.asarray(rng.normal(size=(DIM, 3)), jnp.float32),
    }
    ids = jnp.array([1, 3, 3, -1])
    grads = {
        "embedding": sparse_rows(ids, jnp.ones((4, DIM)), num_rows=rows),
        "kernel": jnp.ones((DIM, 3)),
    }
    return params, grads


NOT_ROW_WISE = {
    "lamb": lambda: optax.lamb(0.1),
    "lars": lambda: optax.lars(0.1),
    "trust_ratio": lambda: optax.chain(
        optax.scale_by_adam(), optax.scale_by_trust_ratio()
    ),
    "muon": lambda: optax.contrib.muon(0.1),
    # Thresholds that unit-scale stand-ins never reach: the probe must also
    # try large gradients and small params.
    "block_rms_10": lambda: optax.chain(optax.clip_by_block_rms(10.0), optax.sgd(1)),
    "adaptive_clip_10": lambda: optax.chain(
        optax.adaptive_grad_clip(10.0), optax.sgd(1.0)
    ),
}


@pytest.mark.parametrize("name", NOT_ROW_WISE)
def test_optimizers_that_are_not_row_wise_are_refused_when_traced(name):
    if name == "muon" and not hasattr(optax.contrib, "muon"):
        pytest.skip("this optax has no contrib.muon")
    params, grads = embedding_and_kernel()
    tx = sparse_lazy(standard_promotion(NOT_ROW_WISE[name]()))
    step = jax.jit(update_and_apply, static_argnums=0)
    with pytest.raises(ValueError, match=r"sparse_lazy.*rows.*independently"):
        step(tx, params, tx.init(params), grads)


FACTORED = {
    "adafactor": lambda: optax.adafactor(0.1),
    "sm3": lambda: optax.sm3(0.1),
}


@pytest.mark.parametrize("make_inner", FACTORED.values(), ids=FACTORED.keys())
def test_factored_optimizers_are_refused_by_sparse_lazy(make_inner):
    # 256 x 128: big enough for adafactor to factor (min_dim_size_to_factor=128).
    params, grads = embedding_and_kernel(rows=256)
    params["embedding"] = jnp.ones((256, 128))
    grads["embedding"] = sparse_rows(jnp.array([1, 3]), jnp.ones((2, 128)), 256)
    tx = sparse_lazy(standard_promotion(make_inner()))
    with pytest.raises(ValueError, match=r"sparse_lazy.*one row per table row"):
        jax.jit(update_and_apply, static_argnums=0)(tx, params, tx.init(params), grads)


@pytest.mark.parametrize("make_inner", FACTORED.values(), ids=FACTORED.keys())
def test_lazy_mask_refuses_to_freeze_a_factored_state_at_init(make_inner):
    tx = lazy_mask(standard_promotion(make_inner()), freeze_state=True)
    with pytest.raises(ValueError, match=r"freeze_state=True.*one row per table row"):
        tx.init({"embedding": jnp.ones((256, 128))})


# SparseRows handed to code that cannot take them (issue 10, "unclear errors").


def test_optax_apply_updates_refuses_sparse_rows():
    params, grads = embedding_and_kernel()
    with pytest.raises(TypeError, match="SparseRows is not an array"):
        optax.apply_updates(params, grads)


def test_lazy_mask_refuses_sparse_rows():
    params, grads = embedding_and_kernel()
    tx = lazy_mask(adam())
    with pytest.raises(ValueError, match=r"lazy_mask got a SparseRows.*sparse_lazy"):
        tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("inner", ["adam", "sparse_lazy(adam)"])
def test_lookahead_update_refuses_sparse_rows_and_names_update_and_apply(inner):
    params, grads = embedding_and_kernel()
    tx = lookahead(adam() if inner == "adam" else sparse_lazy(adam()))
    with pytest.raises(ValueError, match=r"SparseRows.*update_and_apply"):
        tx.update(grads, tx.init(params), params)


def test_update_and_apply_of_a_dense_lookahead_refuses_sparse_rows():
    params, grads = embedding_and_kernel()
    tx = lookahead(adam())
    with pytest.raises(ValueError, match=r"SparseRows.*sparse_lazy"):
        update_and_apply(tx, params, tx.init(params), grads)


def test_a_transformation_before_sparse_lazy_is_refused_clearly():
    """optax.scale maps over the SparseRows' leaves and scales the ids too.

    Under strict promotion optax.scale itself fails on the int ids; users run
    standard promotion, where the ids arrive as floats and sparse_lazy must say
    where the transformation belongs.
    """
    params, grads = embedding_and_kernel()
    tx = optax.chain(optax.scale(0.5), sparse_lazy(adam()))
    with jax.numpy_dtype_promotion("standard"):
        with pytest.raises(TypeError, match=r"before sparse_lazy.*inside"):
            update_and_apply(tx, params, tx.init(params), grads)


def test_clipping_before_sparse_lazy_fails_rather_than_clipping_the_ids():
    """Not a clear error (a lax.select dtype error from inside optax: a chain
    cannot see that sparse_lazy follows), but never a step on clipped ids.
    The working form, clipping inside sparse_lazy, is tested above."""
    params, grads = embedding_and_kernel()
    tx = optax.chain(optax.clip_by_global_norm(1.0), sparse_lazy(adam()))
    with jax.numpy_dtype_promotion("standard"):
        with pytest.raises(TypeError):
            update_and_apply(tx, params, tx.init(params), grads)


def test_multisteps_of_sparse_lazy_fails_rather_than_accumulating_ids():
    """MultiSteps adds gradients densely; with SparseRows it fails on its own
    tree_map (a raw pytree error, not ours), before sparse_lazy runs."""
    params, grads = embedding_and_kernel()
    tx = optax.MultiSteps(sparse_lazy(adam()), every_k_schedule=2)
    # jax's own error, which differs across jax versions: a ValueError naming
    # the pytree structure (0.8 on), an AttributeError on .dtype (0.6, 0.7).
    with pytest.raises((ValueError, AttributeError), match="pytree structure|dtype"):
        tx.update(grads, tx.init(params), params)


# Cost, Flax, devices.


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

    sparse = compiled_text(sparse_lazy(adam(1e-3)), grads)
    dense = compiled_text(adam(1e-3), dense_grads)
    assert hlo_bytes.path_copies(sparse, 0, {"f32[100000,64]"}) == 0
    sparse_bytes, dense_bytes = (
        hlo_bytes.path_bytes(sparse, 0),
        hlo_bytes.path_bytes(dense, 0),
    )
    assert sparse_bytes < 0.05 * dense_bytes, (sparse_bytes, dense_bytes)


# The sparse path against the dense oracle over random id buffers (issue 10,
# "Done means"). One table shape and buffer size, so that the jitted steps
# compile once; the ids in the buffer vary.

TABLE_ROWS, BUFFER = 5, 6
PADDING = [-1, -3, TABLE_ROWS, TABLE_ROWS + 7]
# Two thirds of the profile's examples: 20 (200 under the stress profile).
EXAMPLES = max(1, settings.default.max_examples * 2 // 3)

id_buffers = st.lists(
    st.one_of(st.integers(0, TABLE_ROWS - 1), st.sampled_from(PADDING)),
    min_size=BUFFER,
    max_size=BUFFER,
)

SPARSE_ADAM = sparse_lazy(adam(0.1))
DENSE_ADAM = lazy_mask(adam(0.1), mask=True, freeze_state=True)
STEP = jax.jit(update_and_apply, static_argnums=0)


def lookahead_pair():
    return (
        lookahead(SPARSE_ADAM, sync_period=2, sync_staging="select"),
        lookahead(DENSE_ADAM, sync_period=2, sync_staging="select"),
    )


@pytest.mark.parametrize(
    "txs",
    [
        pytest.param((SPARSE_ADAM, DENSE_ADAM), id="sparse_lazy"),
        pytest.param(lookahead_pair(), id="lookahead"),
    ],
)
@settings(max_examples=EXAMPLES)
@given(
    buffers=st.lists(id_buffers, min_size=3, max_size=3),
    give_num_rows=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(buffers=[[-1] * BUFFER] * 3, give_num_rows=True, seed=0)  # all padding
@example(
    buffers=[[2] * BUFFER, [0, 0, 4, 4, -1, 5], [4] * BUFFER],
    give_num_rows=False,
    seed=1,
)
def test_random_id_buffers_step_like_the_dense_oracle(
    txs, buffers, give_num_rows, seed
):
    """Three steps of Adam on hand-built SparseRows (padding, repeats, ids past
    the table) against lazy_mask(freeze_state=True) on the dense gradient they
    stand for, told the sampled rows (a row whose values cancel is sampled)."""
    sparse_tx, dense_tx = txs
    rng = np.random.default_rng(seed)
    table = jnp.asarray(rng.normal(size=(TABLE_ROWS, DIM)), jnp.float32)
    sparse, sparse_state = table, sparse_tx.init(table)
    dense, dense_state = table, dense_tx.init(table)
    num_rows = TABLE_ROWS if give_num_rows else None
    for buffer in buffers:
        ids = jnp.asarray(buffer, jnp.int32)
        values = jnp.asarray(rng.normal(size=(BUFFER, DIM)), jnp.float32)
        rows = SparseRows(ids, values, num_rows)
        sparse, sparse_state = STEP(sparse_tx, sparse, sparse_state, rows)
        dense, dense_state = STEP(
            dense_tx,
            dense,
            dense_state,
            dense_gradient(ids, values, TABLE_ROWS),
            sampled_rows=ids,
        )
    chex.assert_trees_all_close(sparse, dense, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(
        moments(sparse_state), moments(dense_state), rtol=1e-6, atol=1e-7
    )
    unsampled = sorted(set(range(TABLE_ROWS)) - {i for b in buffers for i in b})
    np.testing.assert_array_equal(
        sparse[np.array(unsampled, int)], table[np.array(unsampled, int)]
    )


@pytest.mark.parametrize("table_dtype", [jnp.bfloat16, jnp.float16])
def test_rows_of_a_narrower_table_are_rounded_once_as_optax_apply_updates(
    table_dtype,
):
    # float32 updates on a 16-bit table: adding in the table's dtype would
    # round each update and then the sum; the dense path rounds the sum once.
    rng = np.random.default_rng(3)
    table = jnp.asarray(rng.normal(size=(ROWS, 64)), table_dtype)
    ids = np.concatenate([rng.permutation(ROWS)[:40], [7, 7, -1, ROWS]])
    values = (rng.normal(size=(ids.size, 64)) * 1e-2).astype(np.float32)
    rows = SparseRows(jnp.asarray(ids), jnp.asarray(values), ROWS)
    with jax.numpy_dtype_promotion("standard"):  # optax's own needs it
        want = optax.apply_updates(table, dense_gradient(ids, values, ROWS))
    for apply in (apply_sparse_updates, jax.jit(apply_sparse_updates)):
        got = apply(table, rows)
        assert got.dtype == table_dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize(
    "make_tx", [sparse_lazy, lambda inner: lookahead(sparse_lazy(inner), 2)]
)
def test_numpy_params_and_state_of_a_restored_checkpoint(make_tx):
    # flax.serialization.from_bytes gives back NumPy arrays; eager steps on
    # them must equal the steps on the JAX arrays they were saved from.
    from flax import serialization

    tx = make_tx(adam())
    params = {"embedding": jnp.arange(1.0 * ROWS * DIM).reshape(ROWS, DIM)}
    saved = (params, tx.init(params))
    restored = serialization.from_bytes(saved, serialization.to_bytes(saved))
    assert isinstance(restored[0]["embedding"], np.ndarray)
    ours, theirs = restored, saved
    for ids in ([1, 3, -1], [3, 8, 8], [0, 1, 2]):
        rows = sparse_rows(jnp.asarray(ids), jnp.ones((3, DIM)), ROWS)
        ours = update_and_apply(tx, *ours, {"embedding": rows})
        theirs = update_and_apply(tx, *theirs, {"embedding": rows})
    chex.assert_trees_all_equal(ours, theirs)
    table = np.asarray(restored[0]["embedding"])
    chex.assert_trees_all_equal(
        gather_rows(table, jnp.array([2, -1])),
        gather_rows(params["embedding"], jnp.array([2, -1])),
    )
