"""Trains a Flax TrainState, saving or resuming it, in its own process.

Run by tests/test_flax.py as ``python -m tests.checkpoint_worker MODE DIR``:

- ``save``: 7 steps (mid-period: k=5), checkpoint, then on to 15 steps.
- ``resume``: restore the checkpoint into a fresh TrainState, on to 15 steps.
- ``save_plain``: a checkpoint of the same model trained without lookahead.

Each mode writes the final params to DIR/MODE.npz. FORMAT (orbax or bytes)
picks the checkpointer.
"""

import pathlib
import sys

import jax
import numpy as np
import optax
from flax import serialization
from flax.training.train_state import TrainState

from optax_lookahead import lazy_mask, lookahead
from tests.flax_models import LinenClassifier, batches, linen_train_step

SAVE_AT, TOTAL = 7, 15


def fresh_state(with_lookahead=True, inner_state_on_sync="pullback"):
    model = LinenClassifier()
    params = model.init(jax.random.key(0), next(batches(0, 1))[0])["params"]
    inner = lazy_mask(optax.adam(0.05))
    tx = lookahead(inner, 5, 0.5, inner_state_on_sync) if with_lookahead else inner
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def save(state, path, checkpoint_format):
    if checkpoint_format == "orbax":
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path.resolve() / "ckpt", state)
        checkpointer.wait_until_finished()
    else:
        (path / "ckpt.msgpack").write_bytes(serialization.to_bytes(state))


def restore(template, path, checkpoint_format):
    if checkpoint_format == "orbax":
        import orbax.checkpoint as ocp

        return ocp.StandardCheckpointer().restore(path.resolve() / "ckpt", template)
    return serialization.from_bytes(template, (path / "ckpt.msgpack").read_bytes())


def main(mode, directory, checkpoint_format):
    path = pathlib.Path(directory)
    data = list(batches(1, TOTAL))
    if mode == "resume":
        state = restore(fresh_state(), path, checkpoint_format)
        start = int(state.step)
    else:
        state, start = fresh_state(with_lookahead=mode == "save"), 0
    for step, (words, labels) in enumerate(data[start:], start=start):
        if step == SAVE_AT and mode != "resume":
            save(state, path, checkpoint_format)
        state, _ = linen_train_step(state, words, labels)
    leaves = jax.tree.leaves(state.params)
    np.savez(path / f"{mode}.npz", *[np.asarray(x) for x in leaves])


if __name__ == "__main__":
    main(*sys.argv[1:])
