"""Small text classifiers in both Flax APIs, trained by the Flax tests."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

VOCAB, DIM, LENGTH = 50, 8, 6


class LinenClassifier(nn.Module):
    """Embed -> LSTM over the tokens -> Dense(1)."""

    @nn.compact
    def __call__(self, words):
        embedded = nn.Embed(VOCAB, DIM)(words)
        hidden = nn.RNN(nn.LSTMCell(DIM))(embedded)[:, -1]
        return nn.Dense(1)(hidden)[:, 0]


class NNXClassifier(nnx.Module):
    """Embed -> mean pooling -> Dense(1)."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.dense = nnx.Linear(DIM, 1, rngs=rngs)

    def __call__(self, words):
        return self.dense(self.embed(words).mean(axis=1))[:, 0]


def batches(seed, count, batch=16):
    """Sentences over words 0..29 (30..49 never appear); label: more words < 15."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        words = rng.integers(0, 30, size=(batch, LENGTH))
        labels = (np.sum(words < 15, axis=1) > LENGTH / 2).astype(np.float32)
        yield jnp.asarray(words), jnp.asarray(labels)


def loss_from_logits(logits, labels):
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def linen_loss(apply_fn, params, words, labels):
    return loss_from_logits(apply_fn({"params": params}, words), labels)


@jax.jit
def linen_train_step(state, words, labels):
    loss, grads = jax.value_and_grad(
        lambda p: linen_loss(state.apply_fn, p, words, labels)
    )(state.params)
    return state.apply_gradients(grads=grads), loss
