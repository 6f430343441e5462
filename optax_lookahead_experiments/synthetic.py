"""The synthetic sentences of the quick starts (``examples/quickstart.py`` and
``notebooks/01_quickstart.ipynb``).

Words 0-399 are positive, 400-799 negative, 800-999 never used; a sentence's
label is whether it holds more positive than negative words. An embedding
model must learn a row per word, and the rows of words 800-999 never get a
gradient, which shows lazy updates at a glance.
"""

import jax.numpy as jnp
import numpy as np

VOCAB = 1000  # rows of the embedding table
LENGTH = 12  # words per sentence
POSITIVE, USED = 400, 800  # words below POSITIVE are positive; USED and up: unused


def make_data(rng: np.random.Generator, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``n`` sentences ``(n, LENGTH)`` int and their labels ``(n,)`` float32."""
    words = rng.integers(0, USED, size=(n, LENGTH))
    labels = (np.sum(words < POSITIVE, axis=1) > LENGTH / 2).astype(np.float32)
    return jnp.asarray(words), jnp.asarray(labels)
