"""The LazyOptimizer experiment's model: Embedding -> LSTM -> Dense, in Flax.

It mirrors the Keras 2.2.4 defaults the original script ran with:
``Embedding(20000, 128)`` initialized uniformly in [-0.05, 0.05];
``LSTM(128, dropout=0.2, recurrent_dropout=0.2)`` with Glorot-uniform input
kernel, orthogonal recurrent kernel, zero bias but 1 on the forget gate,
hard-sigmoid gates and tanh activations; ``Dense(1)`` with a sigmoid, trained
on binary cross-entropy.

Keras (implementation 1, its default then) draws one dropout mask per gate for
the inputs and one per gate for the recurrent state, once per batch, and uses
the same masks at every time step. This module does the same, so the input
projection is computed for all time steps before the ``lax.scan`` over them.
"""

from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

EMBED_DIM = 128
HIDDEN = 128
DROPOUT = 0.2
RECURRENT_DROPOUT = 0.2
GATES = 4  # Keras' order: input, forget, cell candidate, output


def uniform_init(scale: float) -> Callable:
    """Keras' ``RandomUniform(-scale, scale)``; Flax's ``uniform`` starts at 0."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def forget_bias_init(key, shape, dtype=jnp.float32):
    """Zeros, except ones for the forget gate (Keras' ``unit_forget_bias``)."""
    del key
    return jnp.zeros(shape, dtype).at[1].set(1.0)


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """Keras 2's piecewise-linear sigmoid: ``clip(0.2 x + 0.5, 0, 1)``."""
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def dropout_masks(key, shape, rate: float, dtype=jnp.float32) -> jax.Array:
    """Inverted-dropout masks: 0 or ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), 0.0)


class KerasLSTM(nn.Module):
    """A Keras-2 style LSTM layer returning the last hidden state.

    Attributes:
      hidden: the number of units.
      dropout: the input dropout rate.
      recurrent_dropout: the dropout rate on the recurrent state.
    """

    hidden: int = HIDDEN
    dropout: float = DROPOUT
    recurrent_dropout: float = RECURRENT_DROPOUT

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
        batch, _, features = inputs.shape
        # Gate-major weights, (gate, in, out): measured faster than (in, gate,
        # out) on CPU. Initialized as one (in, 4 * hidden) matrix each, as Keras.
        glorot = nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=1, out_axis=(0, 2)
        )
        orthogonal = nn.initializers.orthogonal(column_axis=-1)

        def recurrent_init(key, shape):
            gates, hidden, _ = shape
            matrix = orthogonal(key, (hidden, gates * hidden))
            return matrix.reshape(hidden, gates, hidden).transpose(1, 0, 2)

        kernel = self.param("kernel", glorot, (GATES, features, self.hidden))
        recurrent = self.param(
            "recurrent_kernel", recurrent_init, (GATES, self.hidden, self.hidden)
        )
        bias = self.param("bias", forget_bias_init, (GATES, self.hidden))

        if train:
            input_key, state_key = jax.random.split(self.make_rng("dropout"))
            input_masks = dropout_masks(
                input_key, (GATES, batch, features), self.dropout
            )
            state_masks = dropout_masks(
                state_key, (GATES, batch, self.hidden), self.recurrent_dropout
            )
            # (time, gate, batch, hidden): gate g sees the inputs through mask g.
            projected = jnp.einsum("btf,gbf,gfh->tgbh", inputs, input_masks, kernel)
        else:
            state_masks = jnp.ones((GATES, batch, self.hidden), inputs.dtype)
            projected = jnp.einsum("btf,gfh->tgbh", inputs, kernel)
        projected = projected + bias[None, :, None, :]

        def step(carry, x_t):
            h, c = carry
            z = x_t + jnp.einsum("gbh,ghk->gbk", state_masks * h[None], recurrent)
            c = hard_sigmoid(z[1]) * c + hard_sigmoid(z[0]) * jnp.tanh(z[2])
            h = hard_sigmoid(z[3]) * jnp.tanh(c)
            return (h, c), None

        zeros = jnp.zeros((batch, self.hidden), inputs.dtype)
        (h, _), _ = jax.lax.scan(step, (zeros, zeros), projected)
        return h


class SentimentLSTM(nn.Module):
    """Word ids ``(batch, time)`` -> one logit per review (positive > 0)."""

    vocab_size: int
    embed_dim: int = EMBED_DIM
    hidden: int = HIDDEN

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        # Flax names the table "embedding", which lazy_mask selects by default.
        x = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            embedding_init=uniform_init(0.05),
            name="embed",
        )(tokens)
        h = KerasLSTM(self.hidden, name="lstm")(x, train)
        logits = nn.Dense(
            1, kernel_init=nn.initializers.glorot_uniform(), name="dense"
        )(h)
        return logits[:, 0]


def init_params(model: SentimentLSTM, key: jax.Array, max_len: int):
    """The model's parameters (the ``params`` collection)."""
    return model.init(key, jnp.zeros((1, max_len), jnp.int32))["params"]


def make_train_step(
    model: SentimentLSTM, tx: optax.GradientTransformation, vmapped: bool = False
):
    """A jitted training step ``(params, opt_state, tokens, labels, key)``.

    ``params`` and ``opt_state`` are donated: the step updates them in place.
    Returns the new params and state, the batch's mean loss, and the number of
    embedding rows the update moves although no review of the batch contains
    their word (stale momentum; zero for a lazy optimizer, except at a
    lookahead sync, which moves every row back toward the slow weights).

    With ``vmapped``, every argument and result has a leading axis of seeds:
    several independent runs train in one compiled program.
    """

    def loss_fn(params, tokens, labels, key):
        logits = model.apply(
            {"params": params}, tokens, train=True, rngs={"dropout": key}
        )
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    def train_step(params, opt_state, tokens, labels, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        # Read from the updates, so the old table need not outlive the step.
        table_update = updates["embed"]["embedding"]
        in_batch = jnp.zeros(table_update.shape[0], bool).at[tokens].set(True)
        moved = jnp.any(table_update != 0, axis=1)
        stale_rows = jnp.sum(moved & ~in_batch)
        return optax.apply_updates(params, updates), opt_state, loss, stale_rows

    if vmapped:
        train_step = jax.vmap(train_step)
    return partial(jax.jit, donate_argnums=(0, 1))(train_step)


def make_eval_step(model: SentimentLSTM, vmapped: bool = False):
    """A jitted step: (params, tokens, labels) -> (correct, loss), per review.

    With ``vmapped``, ``params`` has a leading axis of seeds, and so have the
    results; every seed sees the same reviews.
    """

    def eval_step(params, tokens, labels):
        logits = model.apply({"params": params}, tokens)
        correct = (logits > 0) == (labels > 0.5)
        return correct, optax.sigmoid_binary_cross_entropy(logits, labels)

    if vmapped:
        eval_step = jax.vmap(eval_step, in_axes=(0, None, None))
    return jax.jit(eval_step)
