"""pmap, sharded jit, shard_map and donation on 8 host CPU devices.

The root conftest.py sets ``--xla_force_host_platform_device_count=8``.
"""

import re
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_lookahead import (
    LookaheadState,
    lazy_mask,
    lookahead,
    lookahead_jit,
    slow_params,
    sparse_lazy,
    sparse_rows,
    update_and_apply,
)
from tests.helpers import assert_trees_close, standard_promotion, step
from tests.test_sparse import DIM as SPARSE_DIM
from tests.test_sparse import ROWS as SPARSE_ROWS
from tests.test_sparse import lookup_problem, moments

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices (see the root conftest.py)"
)

VOCAB, DIM = 32, 8


def make_tx(freeze_state=False, inner_state_on_sync="keep", axis_name=None):
    inner = standard_promotion(optax.adam(0.05))
    return lookahead(
        lazy_mask(inner, freeze_state=freeze_state, axis_name=axis_name),
        sync_period=3,
        inner_state_on_sync=inner_state_on_sync,
    )


def init_params(key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    return {
        "embedding": jax.random.normal(k1, (VOCAB, DIM)),
        "kernel": jax.random.normal(k2, (DIM, 4)),
    }


def loss_fn(params, words):
    hidden = params["embedding"][words].mean(axis=1) @ params["kernel"]
    return jnp.mean(jnp.square(hidden - 1.0))


def word_batches(count, batch):
    rng = np.random.default_rng(0)
    # Words 24..31 never occur, so their rows must never move.
    return [jnp.asarray(rng.integers(0, 24, size=(batch, 5))) for _ in range(count)]


def single_device_run(tx, params, batches, **extra_args):
    state = tx.init(params)

    @jax.jit
    def train_step(params, state, words):
        return step(tx, params, state, jax.grad(loss_fn)(params, words), **extra_args)

    for words in batches:
        params, state = train_step(params, state, words)
    return params, state


@pytest.mark.parametrize("freeze_state", [False, True])
def test_pmap_data_parallel_matches_single_device(freeze_state):
    tx = make_tx(freeze_state)
    params = init_params()
    batches = word_batches(count=7, batch=64)
    devices = 8

    @partial(jax.pmap, axis_name="data")
    def train_step(params, state, words):
        grads = jax.lax.pmean(jax.grad(loss_fn)(params, words), "data")
        return step(tx, params, state, grads)

    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * devices), tree)
    replicated_params = replicate(params)
    replicated_state = replicate(tx.init(params))
    for words in batches:
        shards = words.reshape(devices, -1, *words.shape[1:])
        replicated_params, replicated_state = train_step(
            replicated_params, replicated_state, shards
        )

    # Every replica holds the same params and slow weights.
    for leaf in jax.tree.leaves((replicated_params, slow_params(replicated_state))):
        for replica in range(1, devices):
            np.testing.assert_array_equal(leaf[replica], leaf[0])
    # And they match one device on the whole batch (same mean gradient).
    want_params, want_state = single_device_run(tx, params, batches)
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    assert_trees_close(first(replicated_params), want_params, rtol=1e-5, atol=1e-6)
    assert_trees_close(
        slow_params(first(replicated_state)),
        slow_params(want_state),
        rtol=1e-5,
        atol=1e-6,
    )
    unseen = np.asarray(first(replicated_params)["embedding"])[24:]
    np.testing.assert_array_equal(unseen, np.asarray(params["embedding"])[24:])


MESH_SPECS = {
    "both_axes": {"embedding": P("x", "y"), "kernel": P("x", "y")},
    "rows": {"embedding": P("x", None), "kernel": P(None, "y")},
    "columns": {"embedding": P(None, "y"), "kernel": P("y", None)},
}


def mesh_2d(axis_type=AxisType.Explicit):
    return jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type, axis_type))


def sharded_params(mesh, specs):
    return jax.tree.map(
        lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)),
        init_params(),
        specs,
    )


def param_shardings_in_state(tx, state, params):
    """The state's param-mirroring leaves paired with their param's sharding."""
    pairs = []
    optax.tree.map_params(
        tx,
        lambda leaf, param: pairs.append((leaf, param)),
        state,
        params,
        transform_non_params=lambda _: None,
    )
    return pairs


def state_shardings_like(tx, params, mesh):
    """The state's shardings: each param's for the leaves that mirror it, and
    replicated for the rest (step counts), as the README shows."""
    return optax.tree.map_params(
        tx,
        lambda _, param: param.sharding,
        jax.eval_shape(tx.init, params),
        params,
        transform_non_params=lambda _: NamedSharding(mesh, P()),
    )


def assert_state_follows_params(tx, state, params, copies=3):
    pairs = param_shardings_in_state(tx, state, params)
    # slow, mu, nu (and pullback's mu, nu at the last sync) for each param.
    assert len(pairs) == copies * len(jax.tree.leaves(params))
    for leaf, param in pairs:
        assert leaf.sharding.is_equivalent_to(param.sharding, param.ndim), (
            leaf.sharding,
            param.sharding,
        )
        assert leaf.dtype == param.dtype and leaf.shape == param.shape


@pytest.mark.parametrize("layout", sorted(MESH_SPECS))
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_state_follows_param_sharding(layout, axis_type):
    mesh = mesh_2d(axis_type)
    params = sharded_params(mesh, MESH_SPECS[layout])
    tx = make_tx(freeze_state=True)

    # Eager init keeps each state leaf on its param's sharding.
    state = tx.init(params)
    assert_state_follows_params(tx, state, params)

    # jit init: give out_shardings built from the params' shardings.
    state_shardings = state_shardings_like(tx, params, mesh)
    jit_state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    assert_state_follows_params(tx, jit_state, params)

    # Gradients laid out like the params, as a sharded train step produces
    # them; rows 24.. of the table are unsampled.
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    sampled = (jnp.arange(VOCAB) < 24)[:, None]
    grads["embedding"] = jnp.where(sampled, grads["embedding"], 0.0)
    # Without jit and with jit: the updated state keeps the layout.
    for update in (tx.update, jax.jit(tx.update)):
        updates, new_state = update(grads, state, params)
        assert_state_follows_params(tx, new_state, params)
        for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
            assert u.sharding.is_equivalent_to(p.sharding, p.ndim)

    if axis_type == AxisType.Explicit:
        # Sharding is part of the type: jax.typeof shows it on every leaf.
        for leaf, param in param_shardings_in_state(tx, new_state, params):
            assert jax.typeof(leaf).sharding.spec == jax.typeof(param).sharding.spec


def test_init_from_shape_dtype_structs():
    mesh = mesh_2d()
    params = sharded_params(mesh, MESH_SPECS["both_axes"])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    tx = make_tx()
    shapes = jax.eval_shape(tx.init, abstract)
    assert isinstance(shapes, LookaheadState)
    for leaf, param in param_shardings_in_state(tx, shapes, abstract):
        assert leaf.shape == param.shape and leaf.dtype == param.dtype
        # eval_shape reports the abstract mesh: compare layouts, not devices.
        assert leaf.sharding.spec == param.sharding.spec
        assert leaf.sharding.mesh.axis_names == param.sharding.mesh.axis_names


def collectives(hlo_text):
    """Counts of the collective ops in optimized HLO text, by op name."""
    names = re.findall(
        r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
        r"(?:-start)?\(",
        hlo_text,
    )
    return {name: names.count(name) for name in set(names)}


def compiled_step_hlo(tx, params):
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    lowered = jax.jit(step, static_argnums=0).lower(tx, params, state, grads)
    return lowered.compile().as_text()


@pytest.mark.parametrize("layout", sorted(MESH_SPECS))
def test_lookahead_adds_no_collective(layout):
    params = sharded_params(mesh_2d(AxisType.Auto), MESH_SPECS[layout])
    # Global-norm clipping needs all-reduces of its own, so the count is not
    # trivially zero on both sides.
    inner = optax.chain(
        optax.clip_by_global_norm(1.0), standard_promotion(optax.adam(0.05))
    )
    plain = collectives(compiled_step_hlo(inner, params))
    with_lookahead = collectives(compiled_step_hlo(lookahead(inner), params))
    assert plain.get("all-reduce", 0) >= 1
    assert with_lookahead == plain


@pytest.mark.parametrize("freeze_state", [False, True])
def test_lazy_detection_on_a_column_sharded_table_adds_one_small_all_reduce(
    freeze_state,
):
    params = sharded_params(mesh_2d(AxisType.Auto), MESH_SPECS["columns"])
    adam = standard_promotion(optax.adam(0.05))
    plain = compiled_step_hlo(adam, params)
    lazy = compiled_step_hlo(lazy_mask(adam, freeze_state=freeze_state), params)
    added = {
        name: count - collectives(plain).get(name, 0)
        for name, count in collectives(lazy).items()
    }
    assert sum(added.values()) <= 1 and set(added) <= {"all-reduce"}
    # The added all-reduce carries one flag (or partial sum) per row, not the table.
    shapes = lambda hlo: re.findall(r"= (\w+\[[\d,]*\])[^=\n]*? all-reduce\(", hlo)
    extra = list(shapes(lazy))
    for shape in shapes(plain):
        extra.remove(shape)
    assert len(extra) == sum(added.values())
    for shape in extra:
        assert re.fullmatch(rf"\w+\[{VOCAB}\]", shape), shape


def test_row_sharded_table_needs_no_collective_for_detection():
    params = sharded_params(mesh_2d(AxisType.Auto), MESH_SPECS["rows"])
    adam = standard_promotion(optax.adam(0.05))
    assert collectives(compiled_step_hlo(lazy_mask(adam), params)) == collectives(
        compiled_step_hlo(adam, params)
    )


def test_shard_map_runs_the_transforms_per_shard():
    mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
    tx = make_tx(freeze_state=True)
    params = {"embedding": init_params()["embedding"]}
    batches = word_batches(count=5, batch=16)
    specs = {"embedding": P("rows", None)}

    @jax.jit
    def sharded_step(params, state, words):
        grads = jax.grad(lambda p: loss_fn({**p, "kernel": jnp.eye(DIM, 4)}, words))(
            params
        )

        # Each device updates its own block of rows; detection is per row, so
        # it needs nothing from the other shards.
        state_specs = optax.tree.map_params(
            tx, lambda _: P("rows", None), state, transform_non_params=lambda _: P()
        )
        updates, state = jax.shard_map(
            tx.update,
            mesh=mesh,
            in_specs=(specs, state_specs, specs),
            out_specs=(specs, state_specs),
        )(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    sharded = jax.device_put(params, NamedSharding(mesh, P("rows", None)))
    sharded_state = tx.init(sharded)
    for words in batches:
        sharded, sharded_state = sharded_step(sharded, sharded_state, words)

    @jax.jit
    def plain_step(params, state, words):
        grads = jax.grad(lambda p: loss_fn({**p, "kernel": jnp.eye(DIM, 4)}, words))(
            params
        )
        return step(tx, params, state, grads)

    for words in batches:
        params, state = plain_step(params, state, words)
    assert_trees_close(sharded, params, rtol=1e-6, atol=1e-7)
    assert_trees_close(slow_params(sharded_state), slow_params(state), rtol=1e-6)


@pytest.mark.parametrize("init", ["eager", "jit"])
def test_sharded_step_with_donation_reuses_buffers_and_compiles_once(init):
    mesh = mesh_2d(AxisType.Auto)
    params = sharded_params(mesh, MESH_SPECS["rows"])
    tx = make_tx()
    state_shardings = state_shardings_like(tx, params, mesh)
    if init == "jit":
        state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    else:
        state = tx.init(params)
        assert state.step.sharding.is_equivalent_to(NamedSharding(mesh, P()), 0)
    chex.clear_trace_counter()

    @partial(jax.jit, donate_argnums=(0, 1))
    @chex.assert_max_traces(n=1)
    def train_step(params, state, words):
        return step(tx, params, state, jax.grad(loss_fn)(params, words))

    for words in word_batches(count=6, batch=16):
        old_params, old_state = params, state
        params, state = train_step(params, state, words)
        assert old_params["embedding"].is_deleted()
        assert old_state.slow["embedding"].is_deleted()
    assert train_step._cache_size() == 1
    assert_state_follows_params(tx, state, params)


def test_pmap_with_per_device_sampled_rows_and_axis_name_stays_in_step():
    """Each device passes its own ids; axis_name ORs them, so replicas agree.

    The gradient here has every row non-zero (an L2 term), so only the ids say
    which rows were sampled. Without axis_name each replica would mask other
    rows and the replicas' params and slow weights would drift apart.
    """
    devices = 8
    tx = make_tx(freeze_state=True, axis_name="data")
    params = init_params()
    batches = word_batches(count=4, batch=32)

    def l2_loss(params, words):
        return loss_fn(params, words) + 1e-3 * jnp.sum(params["embedding"] ** 2)

    @partial(jax.pmap, axis_name="data")
    def train_step(params, state, words):
        grads = jax.lax.pmean(jax.grad(l2_loss)(params, words), "data")
        return step(tx, params, state, grads, sampled_rows=words)

    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * devices), tree)
    replicated_params, replicated_state = replicate(params), replicate(tx.init(params))
    for words in batches:
        shards = words.reshape(devices, -1, *words.shape[1:])
        replicated_params, replicated_state = train_step(
            replicated_params, replicated_state, shards
        )
    for leaf in jax.tree.leaves((replicated_params, slow_params(replicated_state))):
        for replica in range(1, devices):
            np.testing.assert_array_equal(leaf[replica], leaf[0])

    # One device, the whole batch, the union of the ids.
    reference = make_tx(freeze_state=True)
    state = reference.init(params)
    for words in batches:
        grads = jax.grad(l2_loss)(params, words)
        params, state = step(reference, params, state, grads, sampled_rows=words)
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    assert_trees_close(first(replicated_params), params, rtol=1e-5, atol=1e-6)


def test_shard_map_column_sharded_table_combines_row_flags_over_the_axis():
    """A sampled row whose gradient is zero in one shard's columns stays sampled."""
    mesh = jax.make_mesh((2,), ("cols",), axis_types=(AxisType.Explicit,))
    params = {"embedding": jnp.zeros((3, 4))}
    # Row 1 is sampled twice; the second time its gradient is zero in the
    # second shard's columns, where its momentum still moves it.
    grads = [
        {"embedding": jnp.zeros((3, 4)).at[1].set(1.0)},
        {"embedding": jnp.zeros((3, 4)).at[1, :2].set(1.0)},
    ]
    spec = P(None, "cols")

    def run(tx, sharded):
        put = lambda tree: jax.device_put(tree, NamedSharding(mesh, spec))
        now = put(params) if sharded else params
        state = tx.init(now)
        for g in grads:
            if not sharded:
                now, state = step(tx, now, state, g)
                continue
            state_specs = optax.tree.map_params(
                tx, lambda _: spec, state, transform_non_params=lambda _: P()
            )
            specs = {"embedding": spec}
            now, state = jax.jit(
                jax.shard_map(
                    lambda p, s, g: step(tx, p, s, g),
                    mesh=mesh,
                    in_specs=(specs, state_specs, specs),
                    out_specs=(specs, state_specs),
                )
            )(now, state, put(g))
        return np.asarray(now["embedding"])

    momentum = lambda: optax.sgd(1.0, momentum=0.9)
    want = run(lazy_mask(momentum()), sharded=False)
    np.testing.assert_allclose(want[1], [-2.9, -2.9, -1.9, -1.9], rtol=1e-6)
    with jax.set_mesh(mesh):
        got = run(lazy_mask(momentum(), axis_name="cols"), sharded=True)
        per_shard = run(lazy_mask(momentum()), sharded=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(per_shard[1], [-2.9, -2.9, -1.0, -1.0], rtol=1e-6)


@pytest.mark.parametrize("on_sync", ["reset", "pullback"])
@pytest.mark.parametrize("sync_staging", ["cond", "select"])
def test_inner_state_options_trace_on_explicit_meshes(on_sync, sync_staging):
    """reset and pullback sync under cond and select with explicit shardings."""
    tx = lookahead(
        lazy_mask(standard_promotion(optax.adam(0.05))),
        sync_period=2,
        inner_state_on_sync=on_sync,
        sync_staging=sync_staging,
    )

    @jax.jit
    def train_step(params, state, i):
        # An elementwise loss (explicit meshes need no out_sharding for it)
        # whose table gradient skips every third row, shifting each step.
        grads = jax.tree.map(lambda p: p - 1.0, params)
        rows = (jnp.arange(VOCAB) + i) % 3 != 0
        grads["embedding"] = jnp.where(rows[:, None], grads["embedding"], 0.0)
        return step(tx, params, state, grads)

    def run(params):
        state = tx.init(params)
        for i in range(5):
            params, state = train_step(params, state, i)
        return params, state

    want, _ = run(init_params())
    mesh = mesh_2d(AxisType.Explicit)
    with jax.set_mesh(mesh):
        got, state = run(sharded_params(mesh, MESH_SPECS["both_axes"]))
    assert_trees_close(got, want, rtol=1e-6, atol=1e-7)
    assert_state_follows_params(tx, state, got, 5 if on_sync == "pullback" else 3)


def test_sparse_lazy_under_pmap_gathers_rows_across_devices():
    params, batches, kernel_grads = lookup_problem(steps=5, per_step=16)
    tx = sparse_lazy(standard_promotion(optax.adam(0.05)))

    @partial(jax.pmap, axis_name="data")
    def sparse_step(params, state, ids, row_grads, kernel):
        # Each device looked up its own ids; gather them all, then combine:
        # every replica applies the same (mean) sparse gradient.
        all_ids = jax.lax.all_gather(ids, "data")
        count = jax.lax.psum(1, "data")
        all_grads = jax.lax.all_gather(row_grads, "data") / count
        rows = sparse_rows(all_ids, all_grads, num_rows=SPARSE_ROWS)
        kernel = jax.lax.pmean(kernel, "data")
        return update_and_apply(
            tx, params, state, {"embedding": rows, "kernel": kernel}
        )

    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * 8), tree)
    replicated, state = replicate(params), replicate(tx.init(params))
    single, single_state = params, tx.init(params)
    for (ids, row_grads, _), kernel in zip(batches, kernel_grads, strict=True):
        # 16 lookups per step, two on each device.
        replicated, state = sparse_step(
            replicated,
            state,
            ids.reshape(8, 2),
            row_grads.reshape(8, 2, SPARSE_DIM),
            jnp.stack([kernel] * 8),
        )
        mean = sparse_rows(ids, row_grads / 8, num_rows=SPARSE_ROWS)
        single, single_state = update_and_apply(
            tx, single, single_state, {"embedding": mean, "kernel": kernel}
        )
    for leaf in jax.tree.leaves(replicated):
        for replica in range(1, 8):
            np.testing.assert_array_equal(leaf[replica], leaf[0])
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x[0], replicated), single, rtol=1e-6
    )


def test_sparse_lazy_on_a_row_sharded_table_under_jit():
    mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
    params, batches, _ = lookup_problem(steps=4)
    params = {"embedding": params["embedding"][:48]}
    sharded = jax.device_put(params, NamedSharding(mesh, P("rows", None)))
    tx = sparse_lazy(standard_promotion(optax.adam(0.05)))
    sparse_step = jax.jit(update_and_apply, static_argnums=0, donate_argnums=(1, 2))
    state, sharded_state = tx.init(params), tx.init(sharded)
    layout = sharded["embedding"].sharding
    for ids, row_grads, _ in batches:
        grads = {"embedding": sparse_rows(ids, row_grads, num_rows=48)}
        params, state = sparse_step(tx, params, state, grads)
        sharded, sharded_state = sparse_step(tx, sharded, sharded_state, grads)
    chex.assert_trees_all_close(sharded, params, rtol=1e-6)
    assert sharded["embedding"].sharding.is_equivalent_to(layout, 2)
    for moment in moments(sharded_state):
        assert moment["embedding"].sharding.is_equivalent_to(layout, 2)


@pytest.mark.parametrize("outer", ["none", "lookahead"])
def test_sparse_lazy_on_a_row_sharded_table_of_an_explicit_mesh(outer):
    """On an explicit-axes mesh JAX will not choose the sharding of a gather
    from (or a scatter into) a row-sharded table. The sparse step must trace,
    with the ids on no mesh or replicated on it, equal the unsharded step, and
    keep the table and Adam's moments sharded by rows."""
    mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Explicit,))
    by_rows, replicated = NamedSharding(mesh, P("rows", None)), NamedSharding(mesh, P())
    rng = np.random.default_rng(0)
    params = {
        "embedding": jnp.asarray(rng.normal(size=(VOCAB, DIM)), jnp.float32),
        "kernel": jnp.asarray(rng.normal(size=(DIM, 4)), jnp.float32),
    }
    sharded = {
        "embedding": jax.device_put(params["embedding"], by_rows),
        "kernel": jax.device_put(params["kernel"], replicated),
    }
    tx = sparse_lazy(standard_promotion(optax.adam(0.05)))
    if outer == "lookahead":
        tx = lookahead(tx, sync_period=2)
    sparse_step = jax.jit(update_and_apply, static_argnums=0)
    state, sharded_state = tx.init(params), tx.init(sharded)
    for i in range(3):
        ids = jnp.asarray(rng.integers(-1, VOCAB, size=6), jnp.int32)  # -1: padding
        grads = {
            "embedding": sparse_rows(
                ids, jnp.asarray(rng.normal(size=(6, DIM)), jnp.float32), VOCAB
            ),
            "kernel": jnp.asarray(rng.normal(size=(DIM, 4)), jnp.float32),
        }
        params, state = sparse_step(tx, params, state, grads)
        if i == 1:  # once with the rows replicated on the mesh, else on no mesh
            grads = jax.device_put(grads, replicated)
        sharded, sharded_state = sparse_step(tx, sharded, sharded_state, grads)
    chex.assert_trees_all_close(sharded, params, rtol=1e-6)
    if outer == "lookahead":
        chex.assert_trees_all_close(
            slow_params(sharded_state), slow_params(state), rtol=1e-6
        )
    assert sharded["embedding"].sharding.is_equivalent_to(by_rows, 2)
    for name in ("mu", "nu"):
        moment = optax.tree.get(sharded_state, name)["embedding"]
        assert moment.sharding.is_equivalent_to(by_rows, 2), (name, moment.sharding)


# lookahead_jit (issue 12): the host's choice of program under pmap and
# sharded jit.


def test_lookahead_jit_under_pmap_matches_pmap():
    tx = make_tx()
    params = init_params()
    devices = 8

    def train_step(params, state, words):
        grads = jax.lax.pmean(jax.grad(loss_fn)(params, words), "data")
        return step(tx, params, state, grads)

    fast = lookahead_jit(train_step, jit=jax.pmap, axis_name="data")
    reference = jax.pmap(train_step, axis_name="data")
    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * devices), tree)
    ours = theirs = (replicate(params), replicate(tx.init(params)))
    for words in word_batches(count=7, batch=64):
        shards = words.reshape(devices, -1, *words.shape[1:])
        ours, theirs = fast(*ours, shards), reference(*theirs, shards)
    assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_lookahead_jit_on_sharded_params_keeps_shardings_and_donates():
    mesh = mesh_2d(AxisType.Auto)
    params = sharded_params(mesh, MESH_SPECS["rows"])
    tx = make_tx()
    state = tx.init(params)

    @partial(lookahead_jit, donate_argnums=(0, 1))
    def train_step(params, state, words):
        return step(tx, params, state, jax.grad(loss_fn)(params, words))

    reference = jax.jit(train_step.__wrapped__)
    theirs = jax.tree.map(jnp.copy, (params, state))
    for words in word_batches(count=6, batch=16):
        old_params = params
        params, state = train_step(params, state, words)
        theirs = reference(*theirs, words)
        assert old_params["embedding"].is_deleted()
    assert_trees_close((params, state), theirs, rtol=1e-6, atol=1e-7)
    assert_state_follows_params(tx, state, params)


def test_the_readme_recipe_shards_the_state_of_a_sparse_lookahead():
    # optax.tree.map_params must see the touched-rows record as bookkeeping
    # (replicated), not as a copy of the params.
    mesh = jax.make_mesh((8,), ("rows",), axis_types=(AxisType.Auto,))
    by_rows = NamedSharding(mesh, P("rows", None))
    params = {"embedding": jax.device_put(init_params()["embedding"], by_rows)}
    tx = lookahead(sparse_lazy(standard_promotion(optax.adam(0.05))), sync_period=2)
    shardings = state_shardings_like(tx, params, mesh)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    chex.assert_trees_all_equal(state, tx.init(params))
    for leaf in (state.slow, *moments(state)):
        assert leaf["embedding"].sharding.is_equivalent_to(by_rows, 2)
    for leaf in jax.tree.leaves(state.touched_rows):
        assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, P()), leaf.ndim)
    step = jax.jit(update_and_apply, static_argnums=0)
    ids = jnp.array([3, -1, VOCAB - 1])
    grads = {"embedding": sparse_rows(ids, jnp.ones((3, DIM)), VOCAB)}
    for _ in range(2):
        params, state = step(tx, params, state, grads)
    assert params["embedding"].sharding.is_equivalent_to(by_rows, 2)
