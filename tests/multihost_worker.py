"""One process of a multi-process JAX run, for tests/test_multihost.py.

Run as ``python -m tests.multihost_worker MODE DIRECTORY PROCESSES PROCESS_ID
PORT``. The parent sets ``XLA_FLAGS=--xla_force_host_platform_device_count=D``
(D CPU devices per process) and ``JAX_PLATFORMS=cpu``. With ``PROCESSES > 1``
the process joins the others through ``jax.distributed.initialize`` on
``127.0.0.1:PORT`` with gloo CPU collectives; with ``PROCESSES == 1`` it is the
single-process reference on the same global mesh shape (one process holding
every device). Every process builds the same global mesh over all devices and
feeds only its own part of each global batch.

Modes:

- ``train``: trains ``lookahead(lazy_mask(adam))`` on two embedding tables (one
  sharded by rows, one by columns) and a dense kernel for ``STEPS`` steps under
  ``jit``; then the same data parallel under ``shard_map`` (params replicated,
  each device passing its own ids, ``lazy_mask(axis_name="x")``); then
  ``sparse_lazy(adam)`` and ``lookahead(sparse_lazy(adam))`` through
  ``update_and_apply`` with sparse rows built from ids gathered across
  processes. Writes ``train-PROCESS_ID.npz``.
- ``checkpoint``: the same as ``train``, saving the whole train state with
  Orbax from every process after ``SAVE_AT`` steps.
- ``resume``: restores that checkpoint in fresh processes, trains on to
  ``STEPS``, then tries to restore it into states of other optimizers and
  records what each attempt raised.

Each process writes the global values it sees to ``DIRECTORY/train-I.npz`` or
``DIRECTORY/resume-I.npz`` (I: its process id), and what the refused restores
raised to ``DIRECTORY/refusals-I.json``.
"""

import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_lookahead import (
    gather_rows,
    lazy_mask,
    lookahead,
    sparse_lazy,
    sparse_rows,
    update_and_apply,
)
from tests.helpers import standard_promotion

STEPS, SAVE_AT, SYNC_PERIOD = 8, 4, 3  # saved after update 4: syncs at 3 and 6
BATCH, BAG = 16, 4  # the global batch; each process feeds BATCH // PROCESSES
WORDS, TAGS, DIM_A, DIM_B, OUT = 32, 24, 8, 16, 8
SEEN_WORDS, SEEN_TAGS = 24, 20  # ids above these never occur: rows never move
SPARSE_ROWS, SPARSE_DIM, SPARSE_SEEN = 48, 8, 40
L2 = 1e-3  # every gradient row non-zero: lazy_mask must use the sampled ids


def make_mesh():
    # jax.devices() lists each process's devices together, so process i holds
    # a contiguous block of the "x" axis and of every batch sharded over it.
    return Mesh(np.array(jax.devices()), ("x",))


def dense_tx(inner_state_on_sync="keep", **lazy_options):
    adam = standard_promotion(optax.adam(0.05))
    return lookahead(
        lazy_mask(adam, **lazy_options),
        sync_period=SYNC_PERIOD,
        slow_step_size=0.5,
        inner_state_on_sync=inner_state_on_sync,
    )


def host_params(seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
    return {
        "a": {"embedding": normal(WORDS, DIM_A)},
        "b": {"embedding": normal(TAGS, DIM_B)},
        "dense": {"kernel": normal(DIM_A + DIM_B, OUT)},
    }


DENSE_SPECS = {
    "a": {"embedding": P("x", None)},  # sharded by rows
    "b": {"embedding": P(None, "x")},  # sharded by columns
    "dense": {"kernel": P(None, "x")},
}


def put_global(mesh, host_tree, specs):
    """Global arrays from values every process knows whole (the initial params)."""
    return jax.tree.map(
        lambda x, spec: jax.make_array_from_callback(
            x.shape, NamedSharding(mesh, spec), lambda index: x[index]
        ),
        host_tree,
        specs,
    )


def global_batches(seed, count, *, seen, padded=False):
    """The same global batches in every process (each keeps its own slice)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        ids = rng.integers(0, seen, size=(BATCH, BAG)).astype(np.int32)
        if padded:
            ids[rng.random(ids.shape) < 0.25] = -1  # padding of a bag
        target = rng.normal(size=(BATCH, OUT)).astype(np.float32)
        yield ids, target


def local_part(mesh, global_value):
    """This process's slice of a global batch, assembled into a global array."""
    sharding = NamedSharding(mesh, P("x", *([None] * (global_value.ndim - 1))))
    per_process = global_value.shape[0] // jax.process_count()
    start = jax.process_index() * per_process
    local = global_value[start : start + per_process]
    return jax.make_array_from_process_local_data(sharding, local, global_value.shape)


def dense_loss(params, words, tags, target):
    a = params["a"]["embedding"][words].mean(axis=1)
    b = params["b"]["embedding"][tags].mean(axis=1)
    hidden = jnp.concatenate([a, b], axis=1) @ params["dense"]["kernel"]
    l2 = sum(jnp.sum(jnp.square(p["embedding"])) for p in (params["a"], params["b"]))
    return jnp.mean(jnp.square(hidden - target)) + L2 * l2


def dense_step_fn(tx):
    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, words, tags, target):
        params, opt_state = state["params"], state["opt_state"]
        grads = jax.grad(dense_loss)(params, words, tags, target)
        # Row ids from the global batch: under jit the arrays are global, so
        # the flags cover every process's rows with no axis name to give.
        sampled = {"a": {"embedding": words}, "b": {"embedding": tags}}
        sampled["dense"] = {"kernel": None}
        updates, opt_state = tx.update(grads, opt_state, params, sampled_rows=sampled)
        return {"params": optax.apply_updates(params, updates), "opt_state": opt_state}

    return step


def dense_data(mesh):
    words = global_batches(1, STEPS, seen=SEEN_WORDS)
    tags = global_batches(2, STEPS, seen=SEEN_TAGS)
    for (w, target), (t, _) in zip(words, tags, strict=True):
        yield local_part(mesh, w), local_part(mesh, t), local_part(mesh, target)


def fresh_dense_state(mesh, tx):
    params = put_global(mesh, host_params(), DENSE_SPECS)
    return {"params": params, "opt_state": tx.init(params)}  # eager: sharded


def check_layout(tx, state):
    """Each state leaf that mirrors a param (slow weights, moments) lies on its
    param's sharding over the global mesh; the rest (step counts) replicated."""
    params, mesh = state["params"], state["params"]["a"]["embedding"].sharding.mesh
    mirrors = []

    def check_mirror(leaf, param):
        assert leaf.sharding.is_equivalent_to(param.sharding, param.ndim), (
            leaf.sharding,
            param.sharding,
        )
        mirrors.append(leaf)

    def check_other(leaf):
        if isinstance(leaf, jax.Array):
            assert leaf.sharding.is_fully_replicated, leaf.sharding
            assert leaf.sharding.device_set == set(mesh.devices.flat)

    optax.tree.map_params(
        tx, check_mirror, state["opt_state"], params, transform_non_params=check_other
    )
    assert len(mirrors) >= 3 * len(jax.tree.leaves(params))  # slow, mu, nu


def train_data_parallel(mesh):
    """The same training, data parallel under shard_map: params replicated.

    Each device computes the gradient of its own slice of the batch, averages
    it over every device of every process, and passes only its own ids as
    sampled rows; ``axis_name`` makes lazy_mask OR the row flags across all of
    them, so every replica masks the same rows and stays equal to the others.
    """
    tx = dense_tx(axis_name="x")
    host = host_params()
    params = put_global(mesh, host, jax.tree.map(lambda _: P(), host))
    opt_state = tx.init(params)

    def per_device(params, opt_state, words, tags, target):
        # Each device's own gradient (the params marked varying, or shard_map
        # would sum the gradient over devices itself), then the mean of them.
        local = jax.lax.pcast(params, "x", to="varying")
        grads = jax.lax.pmean(jax.grad(dense_loss)(local, words, tags, target), "x")
        sampled = {"a": {"embedding": words}, "b": {"embedding": tags}}
        sampled["dense"] = {"kernel": None}
        updates, opt_state = tx.update(grads, opt_state, params, sampled_rows=sampled)
        return optax.apply_updates(params, updates), opt_state

    step = jax.jit(
        jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(P(), P(), P("x"), P("x"), P("x")),
            out_specs=(P(), P()),
        ),
        donate_argnums=(0, 1),
    )
    for words, tags, target in dense_data(mesh):
        params, opt_state = step(params, opt_state, words, tags, target)
    state = {"params": params, "opt_state": opt_state}
    for leaf in jax.tree.leaves(state):  # every local replica is the same
        replicas = [np.asarray(shard.data) for shard in leaf.addressable_shards]
        for replica in replicas[1:]:
            np.testing.assert_array_equal(replica, replicas[0])
    return state


def sparse_loss(rows, kernel, target):
    return jnp.mean(jnp.square(rows.sum(axis=1) @ kernel - target))


def sparse_host_params():
    rng = np.random.default_rng(3)
    return {
        "embedding": rng.normal(size=(SPARSE_ROWS, SPARSE_DIM)).astype(np.float32),
        "kernel": rng.normal(size=(SPARSE_DIM, OUT)).astype(np.float32),
    }


def train_sparse(mesh, tx):
    specs = {"embedding": P("x", None), "kernel": P(None, "x")}
    params = put_global(mesh, sparse_host_params(), specs)
    opt_state = tx.init(params)
    replicated = NamedSharding(mesh, P())

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, ids, target):
        rows = gather_rows(params["embedding"], ids)
        row_grads, kernel_grads = jax.grad(sparse_loss, argnums=(0, 1))(
            rows, params["kernel"], target
        )
        # Every process's ids and row gradients, gathered: one SparseRows for
        # the whole global batch, the same in every process.
        all_ids = jax.lax.with_sharding_constraint(ids, replicated)
        all_row_grads = jax.lax.with_sharding_constraint(row_grads, replicated)
        grads = {
            "embedding": sparse_rows(all_ids, all_row_grads, num_rows=SPARSE_ROWS),
            "kernel": kernel_grads,
        }
        return update_and_apply(tx, params, opt_state, grads)

    data = global_batches(4, STEPS, seen=SPARSE_SEEN, padded=True)
    for ids, target in data:
        params, opt_state = step(
            params, opt_state, local_part(mesh, ids), local_part(mesh, target)
        )
    return {"params": params, "opt_state": opt_state}


def to_host(tree):
    """Every leaf's global value, in every process, keyed by its tree path."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    values = multihost_utils.process_allgather([x for _, x in leaves], tiled=True)
    return {
        jax.tree_util.keystr(path): np.asarray(value)
        for (path, _), value in zip(leaves, values, strict=True)
    }


def prefixed(prefix, values):
    return {f"{prefix}{key}": value for key, value in values.items()}


def train(mesh, directory, checkpoint):
    tx = dense_tx()
    step = dense_step_fn(tx)
    state = fresh_dense_state(mesh, tx)
    check_layout(tx, state)
    for index, (words, tags, target) in enumerate(dense_data(mesh)):
        if index == SAVE_AT and checkpoint:
            save(state, directory / "checkpoint")
        state = step(state, words, tags, target)
    check_layout(tx, state)
    results = prefixed("dense", to_host(state))
    results |= prefixed("data_parallel", to_host(train_data_parallel(mesh)))
    sparse = sparse_adam()  # one instance: its trace-time checks run once
    results |= prefixed("sparse", to_host(train_sparse(mesh, sparse)))
    with_lookahead = lookahead(sparse, sync_period=SYNC_PERIOD)
    results |= prefixed("lookahead_sparse", to_host(train_sparse(mesh, with_lookahead)))
    return results


def sparse_adam():
    return sparse_lazy(standard_promotion(optax.adam(0.05)))


def save(state, path):
    import orbax.checkpoint as ocp

    # Every process calls save with the same path; each writes its own shards.
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()


def restore(path, like):
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return ocp.StandardCheckpointer().restore(path, abstract)


def resume(mesh, directory):
    tx = dense_tx()
    step = dense_step_fn(tx)
    state = restore(directory / "checkpoint", fresh_dense_state(mesh, tx))
    check_layout(tx, state)  # restored onto the fresh state's shardings
    for index, (words, tags, target) in enumerate(dense_data(mesh)):
        if index >= SAVE_AT:
            state = step(state, words, tags, target)
    check_layout(tx, state)
    return prefixed("dense", to_host(state))


def refusals(mesh, directory):
    """What restoring the checkpoint into other optimizers' states raises."""
    others = {
        "pullback": dense_tx("pullback"),
        "lazy_adam": lazy_mask(standard_promotion(optax.adam(0.05))),
        "adam": standard_promotion(optax.adam(0.05)),
    }
    outcomes = {}
    for name, tx in others.items():
        try:
            restore(directory / "checkpoint", fresh_dense_state(mesh, tx))
        except Exception as error:  # noqa: BLE001 - reported to the parent
            outcomes[name] = {"type": type(error).__name__, "message": str(error)}
        else:
            outcomes[name] = {"type": None, "message": "restored without error"}
    return outcomes


def main(mode, directory, processes, process_id, port):
    directory, processes, process_id = (
        pathlib.Path(directory),
        int(processes),
        int(process_id),
    )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if processes > 1:
        jax.distributed.initialize(
            f"127.0.0.1:{port}",
            num_processes=processes,
            process_id=process_id,
            # The coordinator listens on every interface unless told otherwise.
            coordinator_bind_address=f"127.0.0.1:{port}",
            initialization_timeout=60,
            heartbeat_timeout_seconds=30,
            shutdown_timeout_seconds=30,
        )
    mesh = make_mesh()
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        if mode == "resume":
            results = resume(mesh, directory)
        else:
            results = train(mesh, directory, checkpoint=mode == "checkpoint")
            mode = "train"
        np.savez(directory / f"{mode}-{process_id}.npz", **results)
        if mode == "resume":
            outcomes = refusals(mesh, directory)
            (directory / f"refusals-{process_id}.json").write_text(json.dumps(outcomes))
    if processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
