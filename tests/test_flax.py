"""Drop-in use with Flax linen's TrainState and NNX's Optimizer; checkpoints."""

import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization
from flax.training.train_state import TrainState

from optax_lookahead import lazy_mask, lookahead, slow_params
from optax_lookahead.flax import slow_model, slow_train_state
from tests.flax_models import (
    LinenClassifier,
    NNXClassifier,
    batches,
    linen_loss,
    linen_train_step,
    loss_from_logits,
)
from tests.helpers import assert_trees_close

ROOT = pathlib.Path(__file__).resolve().parent.parent

# optax.adam is not clean under strict promotion (see conftest.py); the Flax
# tests exercise user-facing loops, so they run with JAX's default rules.
pytestmark = pytest.mark.usefixtures("standard_promotion_everywhere")


@pytest.fixture
def standard_promotion_everywhere():
    with jax.numpy_dtype_promotion("standard"):
        yield


def test_linen_train_state_drop_in():
    model = LinenClassifier()
    data = list(batches(seed=0, count=40))
    params = model.init(jax.random.key(0), data[0][0])["params"]
    start_table = np.asarray(params["Embed_0"]["embedding"])
    state = TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=lookahead(lazy_mask(optax.adam(0.03)), sync_period=5),
    )
    eval_words, eval_labels = next(batches(seed=99, count=1, batch=256))
    first_loss = linen_loss(model.apply, params, eval_words, eval_labels)
    for words, labels in data:
        state, _ = linen_train_step(state, words, labels)

    evaluation = slow_train_state(state)
    assert evaluation.params is slow_params(state.opt_state)
    assert evaluation.step == state.step and evaluation.opt_state is state.opt_state
    final_loss = linen_loss(model.apply, evaluation.params, eval_words, eval_labels)
    assert float(final_loss) < 0.7 * float(first_loss)
    # Words 30..49 never occur: their rows are bit-identical, fast and slow.
    for table in (state.params, evaluation.params):
        np.testing.assert_array_equal(
            np.asarray(table["Embed_0"]["embedding"])[30:], start_table[30:]
        )
    # 40 steps, k=5: the last step was a sync, so fast == slow.
    assert_trees_close(state.params, evaluation.params, rtol=0, atol=1e-7)


def nnx_setup(tx):
    model = NNXClassifier(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, words, labels):
        def loss_fn(model):
            return loss_from_logits(model(words), labels)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return model, optimizer, train_step


def test_nnx_optimizer_drop_in():
    model, optimizer, train_step = nnx_setup(
        lookahead(lazy_mask(optax.adam(0.03), freeze_state=True), sync_period=4)
    )
    start_table = np.asarray(model.embed.embedding[...])
    eval_words, eval_labels = next(batches(seed=99, count=1, batch=256))
    first_loss = loss_from_logits(model(eval_words), eval_labels)
    for words, labels in batches(seed=0, count=42):
        train_step(model, optimizer, words, labels)

    # The default mask found the nnx.Embed table: unseen rows never moved,
    # and their Adam moments stayed zero (frozen state).
    table = np.asarray(model.embed.embedding[...])
    np.testing.assert_array_equal(table[30:], start_table[30:])
    assert np.all(table[:30] != start_table[:30])
    pure_state = nnx.as_pure(optimizer.opt_state)
    adam_state = pure_state.inner_state.inner_state[0]
    assert np.all(np.asarray(adam_state.mu["embed"]["embedding"])[30:] == 0)

    slow = slow_params(pure_state)
    evaluated = slow_model(model, optimizer)
    np.testing.assert_array_equal(
        evaluated.embed.embedding[...], slow["embed"]["embedding"]
    )
    # 42 steps, k=4: two fast steps since the last sync, so fast != slow.
    assert not np.array_equal(evaluated.dense.kernel[...], model.dense.kernel[...])
    final_loss = loss_from_logits(evaluated(eval_words), eval_labels)
    assert float(final_loss) < 0.8 * float(first_loss)
    # The trained model keeps its fast weights.
    np.testing.assert_array_equal(model.embed.embedding[...], table)


def test_nnx_callable_mask_sees_variables_at_init_and_arrays_at_update():
    seen = []

    def mask(tree):
        leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
        seen.append({isinstance(x, nnx.Variable) for x in leaves})
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "embed" in jax.tree_util.keystr(path), tree
        )

    model, optimizer, train_step = nnx_setup(lazy_mask(optax.adam(0.03), mask=mask))
    start_table = np.asarray(model.embed.embedding[...])
    for words, labels in batches(seed=0, count=3):
        train_step(model, optimizer, words, labels)
    np.testing.assert_array_equal(
        np.asarray(model.embed.embedding[...])[30:], start_table[30:]
    )
    assert seen[0] == {True}, "init sees nnx.Param variables"
    assert seen[-1] == {False}, "update sees plain arrays"


def test_linen_params_replaced_after_create_are_where_lookahead_starts():
    """TrainState.create(...) then .replace(params=pretrained), as with any optax tx."""
    model = LinenClassifier()
    words, labels = next(batches(seed=0, count=1))
    params = model.init(jax.random.key(0), words)["params"]
    pretrained = jax.tree.map(lambda x: x + 1.0, params)
    state = TrainState.create(
        apply_fn=model.apply, params=params, tx=lookahead(optax.sgd(0.0), 2)
    )
    state = state.replace(params=pretrained)
    for _ in range(2):  # the second step is a sync
        state, _ = linen_train_step(state, words, labels)
    chex.assert_trees_all_equal(state.params, pretrained)
    chex.assert_trees_all_equal(slow_params(state.opt_state), pretrained)


def test_nnx_weights_loaded_after_the_optimizer_are_where_lookahead_starts():
    model, optimizer, train_step = nnx_setup(lookahead(optax.sgd(0.0), sync_period=2))
    loaded = nnx.state(model, nnx.Param)
    loaded = jax.tree.map(lambda x: x + 1.0, loaded)
    nnx.update(model, loaded)  # e.g. restored from a checkpoint
    want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for words, labels in batches(seed=0, count=2):
        train_step(model, optimizer, words, labels)
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(model, nnx.Param)), want)
    chex.assert_trees_all_equal(
        nnx.to_pure_dict(slow_params(nnx.as_pure(optimizer.opt_state))), want
    )


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_format", ["orbax", "bytes"])
def test_checkpoint_mid_period_resumes_bit_identically(tmp_path, checkpoint_format):
    """Saved at step 7 (k=5: between two syncs), restored in a fresh process."""

    def run(mode):
        subprocess.run(
            [sys.executable, "-m", "tests.checkpoint_worker", mode, str(tmp_path)]
            + [checkpoint_format],
            cwd=ROOT,
            check=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        return np.load(tmp_path / f"{mode}.npz")

    never_stopped, resumed = run("save"), run("resume")
    assert len(never_stopped.files) == len(resumed.files) > 0
    for name in never_stopped.files:
        np.testing.assert_array_equal(resumed[name], never_stopped[name])


@pytest.mark.parametrize(
    "saved,restored",
    [
        ("plain", "pullback"),
        ("pullback", "plain"),
        ("pullback", "keep"),
        ("keep", "pullback"),
    ],
)
def test_checkpoint_of_another_optimizer_structure_fails_clearly(
    tmp_path, saved, restored
):
    import orbax.checkpoint as ocp

    from tests.checkpoint_worker import fresh_state

    def state(kind):
        if kind == "plain":
            return fresh_state(with_lookahead=False)
        return fresh_state(inner_state_on_sync=kind)

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / saved, state(saved))
    checkpointer.wait_until_finished()
    with pytest.raises(ValueError, match="opt_state"):
        checkpointer.restore(tmp_path / saved, state(restored))
    with pytest.raises(ValueError, match="opt_state"):
        serialization.from_bytes(state(restored), serialization.to_bytes(state(saved)))


def test_checkpoint_of_a_sparse_lookahead_is_refused_for_a_dense_one():
    # Their states differ only in touched_rows: a record per table, or ().
    from optax_lookahead import lazy_mask, sparse_lazy

    params = {"embedding": jnp.ones((5, 2))}
    grads = {"embedding": jnp.ones((5, 2))}

    def state(inner):
        tx = lookahead(inner(optax.adam(1e-2)))
        return TrainState.create(apply_fn=None, params=params, tx=tx)

    for saved, restored in [(sparse_lazy, lazy_mask), (lazy_mask, sparse_lazy)]:
        saved_bytes = serialization.to_bytes(state(saved).apply_gradients(grads=grads))
        with pytest.raises(ValueError, match="opt_state/touched_rows"):
            serialization.from_bytes(state(restored), saved_bytes)


def test_slow_train_state_needs_a_lookahead():
    state = TrainState.create(
        apply_fn=None, params={"w": jnp.ones(2)}, tx=optax.adam(0.1)
    )
    with pytest.raises(ValueError, match="no LookaheadState"):
        slow_train_state(state)


def test_slow_weights_under_optax_masked_keep_the_params_lookahead_does_not_see():
    # Leaves outside the lookahead have no slow copy (optax.MaskedNode in the
    # slow weights): evaluation uses their params.
    x = jnp.ones((1, 3))
    tx = optax.masked(
        lookahead(optax.sgd(0.1), sync_period=2),
        lambda p: jax.tree.map(lambda leaf: leaf.ndim == 2, p),
    )
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    optimizer.update(model, nnx.grad(lambda m: m(x).sum())(model))
    evaluated = slow_model(model, optimizer)
    chex.assert_trees_all_equal(evaluated.bias[...], model.bias[...])
    assert not np.array_equal(evaluated.kernel[...], model.kernel[...])
    evaluated(x)

    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    state = TrainState.create(apply_fn=None, params=params, tx=tx)
    state = state.apply_gradients(grads=jax.tree.map(jnp.ones_like, params))
    slow = slow_train_state(state).params
    assert isinstance(slow_params(state.opt_state)["bias"], optax.MaskedNode)
    chex.assert_trees_all_equal(slow["bias"], state.params["bias"])
    chex.assert_trees_all_equal(slow["kernel"], params["kernel"])  # before a sync
