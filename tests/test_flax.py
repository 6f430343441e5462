"""Drop-in use with Flax linen's TrainState and NNX's Optimizer; checkpoints."""

import os
import pathlib
import subprocess
import sys

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
        seen.append({type(x).__name__ for x in jax.tree.leaves(tree)})
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
    assert len(seen) >= 2


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


def test_checkpoint_without_lookahead_fails_clearly(tmp_path):
    import orbax.checkpoint as ocp

    from tests.checkpoint_worker import fresh_state

    plain, with_lookahead = fresh_state(with_lookahead=False), fresh_state()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "plain", plain)
    checkpointer.wait_until_finished()
    with pytest.raises(ValueError, match="opt_state"):
        checkpointer.restore(tmp_path / "plain", with_lookahead)
    with pytest.raises(ValueError, match="opt_state"):
        serialization.from_bytes(with_lookahead, serialization.to_bytes(plain))
    # And the other way round: a lookahead checkpoint into a plain state.
    with pytest.raises(ValueError, match="opt_state"):
        serialization.from_bytes(plain, serialization.to_bytes(with_lookahead))


def test_slow_train_state_needs_a_lookahead():
    state = TrainState.create(
        apply_fn=None, params={"w": jnp.ones(2)}, tx=optax.adam(0.1)
    )
    with pytest.raises(ValueError, match="no LookaheadState"):
        slow_train_state(state)
