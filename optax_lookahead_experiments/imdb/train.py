"""Training runs of the IMDB model: data preparation, epochs, evaluation.

Shared by the demo (``optax_lookahead_experiments.imdb.demo``) and the
reproduction (``optax_lookahead_experiments.imdb.reproduce``). A run is fixed by
its optimizer and seed; the seed sets the initial weights, the order of the
batches and the dropout masks, so runs with the same seed differ only in the
optimizer.

:func:`train_seeds` trains several seeds of one optimizer at once: with
``vmap=True`` they run in one compiled program (``jax.vmap`` over each seed's
params, optimizer state, batches and dropout keys), which gives each seed the
same result as training it alone, up to float rounding, at a higher
throughput (see ``RESULTS.md`` for the measurement).
"""

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from optax_lookahead import slow_params
from optax_lookahead_experiments.imdb import data as imdb_data
from optax_lookahead_experiments.imdb import model as imdb_model
from optax_lookahead_experiments.imdb.optimizers import SYNC_PERIOD, make_optimizer

BATCH_SIZE = 32
EVAL_BATCH_SIZE = 500


class Prepared(NamedTuple):
    """Tokenized reviews, ready to train on.

    Attributes:
      train_tokens, train_labels: the training reviews, ``(n, max_len)`` int32
        and ``(n,)`` float32.
      held_out_tokens, held_out_labels: the held-out reviews.
      validation, test: indices into the held-out reviews, the two halves of
        :func:`optax_lookahead_experiments.imdb.data.split_validation_test`.
      vocab_size: the number of embedding rows.
      sizes: split facts for the logs.
    """

    train_tokens: np.ndarray
    train_labels: np.ndarray
    held_out_tokens: np.ndarray
    held_out_labels: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    vocab_size: int
    sizes: dict


def prepare(
    train_size: int | None = None,
    held_out_size: int | None = None,
    vocab_size: int = imdb_data.VOCAB_SIZE,
    max_len: int = imdb_data.MAX_LEN,
) -> Prepared:
    """Loads the fixed split, optionally takes its first reviews, tokenizes.

    The word index is built on the training reviews used; the held-out reviews
    used are split into validation and test halves.
    """
    split = imdb_data.load_split()
    train, held_out = split.train, split.held_out
    train = imdb_data.Reviews(train.texts[:train_size], train.labels[:train_size])
    held_out = imdb_data.Reviews(
        held_out.texts[:held_out_size], held_out.labels[:held_out_size]
    )
    validation, test = imdb_data.split_validation_test(len(held_out.texts))
    tokenizer = imdb_data.Tokenizer(train.texts, vocab_size, max_len)
    train_tokens = tokenizer(train.texts)
    sizes = {
        "duplicates_dropped": split.duplicates_dropped,
        "train_reviews": len(train.texts),
        "held_out_reviews": len(held_out.texts),
        "validation_reviews": len(validation),
        "test_reviews": len(test),
        "validation_seed": imdb_data.VALIDATION_SEED,
        "train_positive": int(train.labels.sum()),
        "held_out_positive": int(held_out.labels.sum()),
        "validation_positive": int(held_out.labels[validation].sum()),
        "test_positive": int(held_out.labels[test].sum()),
        "vocab_size": vocab_size,
        "max_len": max_len,
        "words_in_training_text": len(tokenizer.word_index),
    }
    return Prepared(
        train_tokens,
        train.labels.astype(np.float32),
        tokenizer(held_out.texts),
        held_out.labels.astype(np.float32),
        validation,
        test,
        vocab_size,
        sizes,
    )


def eval_weights(params, opt_state):
    """The weights to evaluate: lookahead's slow weights, else the params."""
    # The Lookahead paper evaluates on the slow weights.
    return slow_params(opt_state, default=params)


def evaluate(eval_step, params, tokens, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per-review correctness and loss, ``(..., n)``, in fixed-size batches."""
    n = len(labels)
    padded = -(-n // EVAL_BATCH_SIZE) * EVAL_BATCH_SIZE
    tokens = np.pad(tokens, ((0, padded - n), (0, 0)))
    labels = np.pad(labels, (0, padded - n))
    correct, loss = [], []
    for start in range(0, padded, EVAL_BATCH_SIZE):
        batch = slice(start, start + EVAL_BATCH_SIZE)
        batch_correct, batch_loss = eval_step(params, tokens[batch], labels[batch])
        correct.append(np.asarray(batch_correct))
        loss.append(np.asarray(batch_loss))
    correct = np.concatenate(correct, axis=-1)[..., :n]
    return correct.astype(np.float64), np.concatenate(loss, axis=-1)[..., :n]


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def train_seeds(
    optimizer: str,
    seeds: Sequence[int],
    data: Prepared,
    epochs: int,
    vmap: bool = True,
    progress: bool = True,
    on_epoch: Callable[[list[dict]], None] | None = None,
    step_timing: bool = True,
) -> dict[int, list[dict]]:
    """Trains one model per seed; returns ``{seed: [one record per epoch]}``.

    With ``vmap`` (and more than one seed) the seeds train in one compiled
    program; otherwise one after the other. ``on_epoch`` gets the records of
    every seed after each epoch (with ``vmap``) or of one seed (without).

    Each record holds the training loss (mean over the epoch's steps), and
    the accuracy and mean loss of the evaluation weights on the validation
    half, the test half and the whole held-out set; the wall time of the
    epoch's training steps (of all seeds of the program together,
    ``seeds_in_program``) and their median step time (which a paused process
    does not inflate); and the mean number of stale row moves per step:
    embedding rows moved although their word was not in the batch, counted on
    the steps that are not lookahead syncs (4 in 5). Without ``step_timing``
    the steps are not waited for one by one (faster on a GPU), and the median
    step time is the epoch's mean.
    """
    seeds = list(seeds)
    options = (epochs, progress, on_epoch, step_timing)
    if not vmap or len(seeds) == 1:
        runs = {}
        for seed in seeds:
            runs |= _train(optimizer, [seed], data, False, *options)
        return runs
    return _train(optimizer, seeds, data, True, *options)


def _train(optimizer, seeds, data, vmapped, epochs, progress, on_epoch, step_timing):
    model = imdb_model.SentimentLSTM(data.vocab_size)
    tx = make_optimizer(optimizer)
    params, opt_states, order_rngs, dropout_keys = [], [], [], []
    for seed in seeds:
        init_key, order_key, dropout_key = jax.random.split(jax.random.key(seed), 3)
        seed_params = imdb_model.init_params(
            model, init_key, data.train_tokens.shape[1]
        )
        params.append(seed_params)
        opt_states.append(tx.init(seed_params))
        order_rngs.append(
            np.random.default_rng(np.asarray(jax.random.key_data(order_key)))
        )
        dropout_keys.append(dropout_key)
    if vmapped:
        params, opt_state = _stack(params), _stack(opt_states)
        dropout_keys = jnp.stack(dropout_keys)
        fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    else:
        (params,), (opt_state,), (dropout_keys,) = params, opt_states, dropout_keys
        fold_in = jax.random.fold_in
    train_step = imdb_model.make_train_step(model, tx, vmapped)
    eval_step = imdb_model.make_eval_step(model, vmapped)
    steps_per_epoch = len(data.train_labels) // BATCH_SIZE  # drops the remainder
    name = f"{optimizer} seed{'s' if len(seeds) > 1 else ''} " + ", ".join(
        map(str, seeds)
    )

    runs = {seed: [] for seed in seeds}
    for epoch in range(1, epochs + 1):
        orders = [rng.permutation(len(data.train_labels)) for rng in order_rngs]
        losses, step_seconds, stale = [], [], []
        epoch_start = time.perf_counter()
        bar = tqdm(
            _batches(orders, steps_per_epoch),
            total=steps_per_epoch,
            desc=f"{name} epoch {epoch}/{epochs}",
            disable=not progress,
            leave=False,
        )
        for step, batch in bar:
            step_start = time.perf_counter()
            global_step = (epoch - 1) * steps_per_epoch + step
            if not vmapped:
                batch = batch[0]
            params, opt_state, loss, stale_rows = train_step(
                params,
                opt_state,
                data.train_tokens[batch],
                data.train_labels[batch],
                fold_in(dropout_keys, global_step),
            )
            losses.append(loss)
            if global_step % SYNC_PERIOD != SYNC_PERIOD - 1:
                stale.append(stale_rows)
            if step_timing:
                jax.block_until_ready(loss)  # waits for the step: honest timing
                step_seconds.append(time.perf_counter() - step_start)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-100:]):.3f}")
        losses = [np.atleast_1d(np.asarray(x)) for x in losses]  # waits for all
        stale = [np.atleast_1d(np.asarray(x)) for x in stale]
        seconds = time.perf_counter() - epoch_start
        if not step_timing:
            step_seconds = [seconds / steps_per_epoch]
        weights = eval_weights(params, opt_state)
        correct, loss = evaluate(
            eval_step, weights, data.held_out_tokens, data.held_out_labels
        )
        correct, loss = np.atleast_2d(correct), np.atleast_2d(loss)
        train_loss = np.mean(losses, axis=0)
        stale_mean = np.mean(stale, axis=0) if stale else np.zeros(len(seeds))
        records = []
        for i, seed in enumerate(seeds):
            record = {
                "optimizer": optimizer,
                "seed": seed,
                "epoch": epoch,
                "train_loss": float(train_loss[i]),
                "validation_accuracy": float(correct[i, data.validation].mean()),
                "test_accuracy": float(correct[i, data.test].mean()),
                "held_out_accuracy": float(correct[i].mean()),
                "validation_loss": float(loss[i, data.validation].mean()),
                "test_loss": float(loss[i, data.test].mean()),
                "held_out_loss": float(loss[i].mean()),
                "seconds": seconds,
                "median_step_seconds": statistics.median(step_seconds),
                "steps": steps_per_epoch,
                "seeds_in_program": len(seeds),
                "stale_rows_per_step": float(stale_mean[i]),
            }
            runs[seed].append(record)
            records.append(record)
        if on_epoch is not None:
            on_epoch(records)
    return runs


def train_run(
    optimizer: str,
    seed: int,
    data: Prepared,
    epochs: int,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Trains one seed alone; returns its records (also passed to on_epoch)."""
    callback = None if on_epoch is None else lambda records: on_epoch(records[0])
    return train_seeds(optimizer, [seed], data, epochs, False, progress, callback)[seed]


def _batches(orders: list[np.ndarray], steps: int) -> Iterator[tuple[int, np.ndarray]]:
    """Per step, the batch of every seed: ``(seeds, BATCH_SIZE)`` indices."""
    orders = np.stack(orders)
    for step in range(steps):
        yield step, orders[:, step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
