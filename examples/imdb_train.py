"""One training run of the IMDB model: data preparation, epochs, evaluation.

Shared by the demo (``imdb_lazy.py``) and the reproduction
(``reproduce_imdb.py``). A run is fixed by its optimizer and seed; the seed
sets the initial weights, the order of the batches and the dropout masks, so
runs with the same seed differ only in the optimizer.
"""

import statistics
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import imdb_data
import imdb_model
import jax
import numpy as np
from imdb_optimizers import SYNC_PERIOD, make_optimizer
from tqdm import tqdm

from optax_lookahead import slow_params

BATCH_SIZE = 32
EVAL_BATCH_SIZE = 500


class Prepared(NamedTuple):
    """Tokenized reviews, ready to train on.

    Attributes:
      train_tokens, train_labels: the training reviews, ``(n, max_len)`` int32
        and ``(n,)`` float32.
      held_out_tokens, held_out_labels: the held-out reviews.
      vocab_size: the number of embedding rows.
      sizes: split facts for the logs.
    """

    train_tokens: np.ndarray
    train_labels: np.ndarray
    held_out_tokens: np.ndarray
    held_out_labels: np.ndarray
    vocab_size: int
    sizes: dict


def prepare(
    train_size: int | None = None,
    held_out_size: int | None = None,
    vocab_size: int = imdb_data.VOCAB_SIZE,
    max_len: int = imdb_data.MAX_LEN,
) -> Prepared:
    """Loads the fixed split, optionally takes its first reviews, tokenizes.

    The word index is built on the training reviews used.
    """
    split = imdb_data.load_split()
    train, held_out = split.train, split.held_out
    train = imdb_data.Reviews(train.texts[:train_size], train.labels[:train_size])
    held_out = imdb_data.Reviews(
        held_out.texts[:held_out_size], held_out.labels[:held_out_size]
    )
    tokenizer = imdb_data.Tokenizer(train.texts, vocab_size, max_len)
    train_tokens = tokenizer(train.texts)
    sizes = {
        "duplicates_dropped": split.duplicates_dropped,
        "train_reviews": len(train.texts),
        "held_out_reviews": len(held_out.texts),
        "train_positive": int(train.labels.sum()),
        "held_out_positive": int(held_out.labels.sum()),
        "vocab_size": vocab_size,
        "max_len": max_len,
        "words_in_training_text": len(tokenizer.word_index),
    }
    return Prepared(
        train_tokens,
        train.labels.astype(np.float32),
        tokenizer(held_out.texts),
        held_out.labels.astype(np.float32),
        vocab_size,
        sizes,
    )


def eval_weights(params, opt_state):
    """The weights to evaluate: lookahead's slow weights, else the params."""
    # The Lookahead paper evaluates on the slow weights.
    return slow_params(opt_state, default=params)


def evaluate(eval_step, params, tokens, labels) -> tuple[float, float]:
    """Accuracy and mean loss over all reviews, in fixed-size batches."""
    n = len(labels)
    padded = -(-n // EVAL_BATCH_SIZE) * EVAL_BATCH_SIZE
    weights = np.zeros(padded, np.float32)
    weights[:n] = 1.0
    tokens = np.pad(tokens, ((0, padded - n), (0, 0)))
    labels = np.pad(labels, (0, padded - n))
    correct = loss = 0.0
    for start in range(0, padded, EVAL_BATCH_SIZE):
        batch = slice(start, start + EVAL_BATCH_SIZE)
        batch_correct, batch_loss = eval_step(
            params, tokens[batch], labels[batch], weights[batch]
        )
        correct, loss = correct + float(batch_correct), loss + float(batch_loss)
    return correct / n, loss / n


def train_run(
    optimizer: str,
    seed: int,
    data: Prepared,
    epochs: int,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Trains one model; returns one record per epoch (also passed to on_epoch).

    Each record holds the held-out accuracy and loss of the evaluation weights,
    the mean training loss, the wall time of the epoch's training steps and
    their median step time (which a paused process does not inflate), and the
    mean number of stale row moves per step: embedding rows moved although
    their word was not in the batch, counted on the steps that are not
    lookahead syncs (4 in 5).
    """
    model = imdb_model.SentimentLSTM(data.vocab_size)
    init_key, order_key, dropout_key = jax.random.split(jax.random.key(seed), 3)
    params = imdb_model.init_params(model, init_key, data.train_tokens.shape[1])
    tx = make_optimizer(optimizer)
    opt_state = tx.init(params)
    train_step = imdb_model.make_train_step(model, tx)
    eval_step = imdb_model.make_eval_step(model)
    order_rng = np.random.default_rng(np.asarray(jax.random.key_data(order_key)))
    steps_per_epoch = len(data.train_labels) // BATCH_SIZE  # drops the remainder

    records = []
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(len(data.train_labels))
        losses, step_seconds, stale = [], [], []
        epoch_start = time.perf_counter()
        bar = tqdm(
            _batches(order, steps_per_epoch),
            total=steps_per_epoch,
            desc=f"{optimizer} seed {seed} epoch {epoch}/{epochs}",
            disable=not progress,
            leave=False,
        )
        for step, batch in bar:
            step_start = time.perf_counter()
            global_step = (epoch - 1) * steps_per_epoch + step
            key = jax.random.fold_in(dropout_key, global_step)
            params, opt_state, loss, stale_rows = train_step(
                params,
                opt_state,
                data.train_tokens[batch],
                data.train_labels[batch],
                key,
            )
            losses.append(float(loss))  # waits for the step, for honest timing
            step_seconds.append(time.perf_counter() - step_start)
            if global_step % SYNC_PERIOD != SYNC_PERIOD - 1:
                stale.append(int(stale_rows))
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.3f}")
        seconds = time.perf_counter() - epoch_start
        weights = eval_weights(params, opt_state)
        accuracy, held_out_loss = evaluate(
            eval_step, weights, data.held_out_tokens, data.held_out_labels
        )
        record = {
            "optimizer": optimizer,
            "seed": seed,
            "epoch": epoch,
            "held_out_accuracy": accuracy,
            "held_out_loss": held_out_loss,
            "train_loss": float(np.mean(losses)),
            "seconds": seconds,
            "median_step_seconds": statistics.median(step_seconds),
            "steps": steps_per_epoch,
            "stale_rows_per_step": float(np.mean(stale)) if stale else 0.0,
        }
        records.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return records


def _batches(order: np.ndarray, steps: int) -> Iterator[tuple[int, np.ndarray]]:
    for step in range(steps):
        yield step, order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
