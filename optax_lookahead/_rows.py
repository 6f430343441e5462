"""Rows of embedding tables, and the ids that name them.

Everything the library knows about rows lives here: which rows count as sampled
(detected from the gradient, or given as ids or flags), the padding rule for
ids, broadcasting a per-row flag over a table, and :class:`SparseRows`, the
gradient of a lookup held as the looked-up rows only, with the gather, scatter
and apply helpers that keep its cost proportional to those rows.

The padding rule, in one place (:func:`clean_ids`): an id outside
``[0, rows of the table)`` names no row. It is dropped wherever ids are used,
so a fixed-size id buffer can be padded with ``-1`` (or any out-of-range id).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lookahead import _checks


def clean_ids(ids: jax.Array, num_rows: int, argument: str = "ids") -> jax.Array:
    """The padding rule: int32 row ids, with every id outside the table moved out.

    Ids outside ``[0, num_rows)`` (``-1`` padding, ids past the end) become
    ``num_rows``, which ``mode="drop"`` scatters drop and ``mode="fill"``
    gathers fill; a negative id would otherwise wrap around to the end of the
    table under JAX's indexing. The comparison happens in the ids' own dtype,
    before the cast, so int8 ids with ``-1`` padding work for tables of any
    size, and an int64 id past the int32 range never wraps into the table:
    NumPy ids are compared on the host, before JAX sees them (with x64 off,
    JAX's default, JAX itself turns int64 into int32 by dropping the high
    bits, silently, also where an int64 array enters a ``jit``-compiled
    function: ids past the int32 range can only be caught before that).

    Args:
      ids: an integer array of any shape.
      num_rows: the number of rows of the table the ids index.
      argument: the argument's name, for the error message.

    Returns:
      int32 ids of the same shape.
    """
    if isinstance(ids, np.ndarray | np.generic) and np.issubdtype(
        ids.dtype, np.integer
    ):
        inside = (ids >= 0) & (ids < num_rows)
        on_host = np.full(np.shape(ids), num_rows, np.int32)
        on_host[inside] = ids[inside]
        ids = on_host
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(
            f"{argument} must be integer row ids, got dtype {ids.dtype}. Cast them"
            " with ids.astype(jnp.int32); use -1 for padding."
        )
    inside = ids >= 0
    if num_rows <= jnp.iinfo(ids.dtype).max:
        inside = inside & (ids < jnp.asarray(num_rows, ids.dtype))
    return jnp.where(inside, ids.astype(jnp.int32), jnp.int32(num_rows))


def detect_sampled_rows(grad: jax.Array) -> jax.Array:
    """A bool per row of ``grad`` (rows along axis 0): True where it is not all zero.

    ``sum(abs(g)) != 0`` was measured as the cheapest test that is also right at
    the edges: a row holding a NaN sums to NaN, which is ``!= 0``, so it counts as
    sampled and the NaN stays visible; tiny values (1e-30) do not underflow as
    they would in ``sum(g * g)``; and no table-size boolean temporary is built,
    as ``any(g != 0)`` would. A 1-D table has one element per row.
    """
    return jnp.sum(jnp.abs(grad), axis=tuple(range(1, grad.ndim))) != 0


def given_sampled_rows(sampled, num_rows: int, where: str) -> jax.Array:
    """Turns a caller's row flags or row ids into a bool vector of ``num_rows``.

    Args:
      sampled: a bool vector of length ``num_rows`` (True = sampled), or an
        integer array of row ids of any shape (padding and repeats allowed,
        see :func:`clean_ids`).
      num_rows: the table's number of rows.
      where: the tree path of the table, for error messages.

    Returns:
      A bool vector of shape ``(num_rows,)``.
    """
    if not isinstance(sampled, np.ndarray | np.generic):
        sampled = jnp.asarray(sampled)  # NumPy ids stay on the host for clean_ids
    if sampled.dtype == jnp.bool_:
        if sampled.shape != (num_rows,):
            raise ValueError(
                f"sampled_rows for {where}: a boolean row mask must have shape"
                f" ({num_rows},), one flag per row, got shape {sampled.shape}."
            )
        return jnp.asarray(sampled)
    ids = clean_ids(sampled, num_rows, f"sampled_rows for {where}").reshape(-1)
    return jnp.zeros((num_rows,), jnp.bool_).at[ids].set(True, mode="drop")


def combine_across(flags: jax.Array, axis_name) -> jax.Array:
    """ORs per-row flags over the named mapped axes (one all-reduce), if any."""
    if axis_name is None:
        return flags
    try:
        # pmax over int32: one all-reduce of a row vector, on every backend.
        return jax.lax.pmax(flags.astype(jnp.int32), axis_name) > 0
    except NameError:  # JAX's "unbound axis name", which names a psum
        raise ValueError(
            f"lazy_mask(axis_name={axis_name!r}): no mapped axis of that name"
            " surrounds this update. Name the axis of the pmap or shard_map that"
            " runs it, or leave axis_name=None under jit and outside any map."
        ) from None


def broadcast_rows(rows: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes a per-row vector so it broadcasts against ``like`` along axis 0."""
    return rows.reshape(rows.shape + (1,) * (like.ndim - 1))


def _refuse_dense_use(self, *_):
    raise TypeError(
        "A SparseRows is not an array: it holds some rows of a table (a sparse"
        " gradient or update), so dense code cannot add, scale or convert it."
        " Give it to sparse_lazy(...) and apply the result with"
        " optax_lookahead.update_and_apply(tx, params, opt_state, grads) or"
        " apply_sparse_updates(params, updates). Transformations that must see"
        " it (clipping, scaling) go inside: sparse_lazy(optax.chain(...)); it"
        " does not work with optax.apply_updates, optax.MultiSteps or"
        " nnx.Optimizer."
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class SparseRows:
    """Some rows of a table: a sparse gradient, or a sparse update.

    Stands for the dense table ``zeros(num_rows, ...).at[ids].add(values)``: ids
    outside ``[0, num_rows)`` (padding) are dropped and repeated ids add up.
    :func:`sparse_rows` builds it from an embedding lookup's gradient, with each
    row once; :func:`sparse_lazy` accepts any valid ``SparseRows``.

    A pytree (``ids`` and ``values`` are its leaves, ``num_rows`` is static), so
    it passes through ``jax.jit``, ``pmap`` and ``shard_map``. It refuses to act
    as an array: code that adds, scales or converts it
    (``optax.apply_updates``, ``optax.MultiSteps``) gets a clear error instead
    of reading the ids as numbers. Code that maps a function over pytree
    leaves still reaches the ids: :func:`sparse_lazy` refuses ids that are no
    longer integers (``optax.scale(0.5)`` or ``optax.clip(1.0)`` placed before
    it), but integer arithmetic on them (``optax.scale(2)``, or adding two
    gradients leaf by leaf with ``jax.tree.map``) changes which rows are
    updated and cannot be told apart from other ids. Put transformations
    inside ``sparse_lazy(optax.chain(...))``, and accumulate row gradients
    before :func:`sparse_rows`, not after.

    Attributes:
      ids: integer row ids, a vector.
      values: one row per id, shape ``ids.shape + table.shape[1:]``.
      num_rows: the number of rows of the table these rows belong to, checked
        against the table where the rows are used; ``None`` if unknown.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_lookahead import SparseRows, apply_sparse_updates
      >>> ids = jnp.array([2, 0, 2, -1])  # -1 is padding; 2 comes twice
      >>> update = SparseRows(ids, jnp.ones((4, 2)), num_rows=3)
      >>> apply_sparse_updates(jnp.zeros((3, 2)), update)
      Array([[1., 1.],
             [0., 0.],
             [2., 2.]], dtype=float32)
    """

    ids: jax.Array
    values: jax.Array
    num_rows: int | None = dataclasses.field(default=None, metadata={"static": True})

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse_dense_use
    __truediv__ = __rtruediv__ = __neg__ = __array__ = __jax_array__ = _refuse_dense_use

    def __post_init__(self):
        if self.num_rows is not None:
            _checks.check_count("SparseRows(num_rows=...)", self.num_rows)


class SparseTransformation(optax.GradientTransformationExtraArgs):
    """A transformation that takes :class:`SparseRows` gradients (sparse_lazy)."""


def is_sparse(x) -> bool:
    return isinstance(x, SparseRows)


def has_sparse(tree) -> bool:
    return any(map(is_sparse, jax.tree.leaves(tree, is_leaf=is_sparse)))


def refuse_sparse(tree, who: str, fix: str) -> None:
    """Raises a clear error if ``tree`` holds a :class:`SparseRows`."""
    if has_sparse(tree):
        raise ValueError(
            f"{who} got a SparseRows gradient, which it cannot take. {fix}"
        )


def checked_rows(rows: SparseRows, table, where: str) -> SparseRows:
    """``rows`` with checked shapes and clean ids, for a table like ``table``."""
    num_rows = table.shape[0] if table.ndim else None
    if num_rows is None or rows.values.shape[1:] != table.shape[1:]:
        raise ValueError(
            f"{where}: SparseRows with rows of shape {rows.values.shape[1:]} do not"
            f" fit a table of shape {table.shape}; values must have shape"
            " ids.shape + table.shape[1:]."
        )
    if rows.num_rows is not None and rows.num_rows != num_rows:
        raise ValueError(
            f"{where}: SparseRows built with num_rows={rows.num_rows} for a table"
            f" of {num_rows} rows; pass num_rows={num_rows} to sparse_rows. (With"
            " the wrong count, padding ids could name real rows.)"
        )
    if rows.ids.ndim != 1 or rows.values.shape[:1] != rows.ids.shape:
        raise ValueError(
            f"{where}: SparseRows must hold a vector of ids and one row per id;"
            f" got ids of shape {rows.ids.shape} and values of shape"
            f" {rows.values.shape}. Build them with sparse_rows(ids, row_grads,"
            " num_rows)."
        )
    ids = clean_ids(rows.ids, num_rows, f"{where}: SparseRows.ids")
    return SparseRows(ids, rows.values, num_rows)


def coalesce(rows: SparseRows, num_rows: int) -> SparseRows:
    """Each row once: repeated ids summed, padding slots last with a zero row.

    The result keeps the number of slots (jit-friendly); unused slots get the
    id ``num_rows`` (outside the table) and a zero row. Rows that are so
    already (ids that increase, padding last: what :func:`sparse_rows` gives)
    are not sorted again: checking the order is one pass over the ids, where
    sorting and summing again was about half of ``sparse_lazy``'s step on CPU.
    """
    ids = clean_ids(rows.ids, num_rows)
    rows = SparseRows(ids, rows.values, num_rows)
    # Each id above the one before it, or padding: then no id repeats. (The
    # rows in order are the false branch, the one tools take as the common
    # path: benchmarks/hlo_bytes.py.)
    increasing = jnp.all((ids[1:] > ids[:-1]) | (ids[1:] == num_rows))
    return jax.lax.cond(
        ~increasing,
        functools.partial(_sort_and_sum, num_rows=num_rows),
        functools.partial(_zero_padding, num_rows=num_rows),
        rows,
    )


def _sort_and_sum(rows: SparseRows, num_rows: int) -> SparseRows:
    """:func:`coalesce` for rows with clean ids in any order."""
    size = rows.ids.shape[0]
    unique, slot = jnp.unique(
        rows.ids, size=size, fill_value=num_rows, return_inverse=True
    )
    summed = jax.ops.segment_sum(rows.values, slot.reshape(size), num_segments=size)
    return _zero_padding(SparseRows(unique, summed, num_rows), num_rows)


def _zero_padding(rows: SparseRows, num_rows: int) -> SparseRows:
    """``rows`` with a zero row in every slot whose id is outside the table."""
    inside = broadcast_rows(rows.ids < num_rows, rows.values)
    return SparseRows(rows.ids, jnp.where(inside, rows.values, 0), num_rows)


def sparse_rows(ids, row_grads, num_rows: int) -> SparseRows:
    """The gradient of an embedding lookup, as one summed row per distinct id.

    A batch may look up the same row many times; an optimizer must see each row
    once, with the sum of its gradients, as the dense gradient would hold it.
    The result has a fixed size (one slot per entry of ``ids``), so it is
    jit-friendly: unused slots get an id outside the table and a zero row.

    Args:
      ids: integer array of looked-up row ids, any shape. Ids outside
        ``[0, num_rows)``, such as ``-1`` padding, are dropped.
      row_grads: gradient of the loss with respect to each looked-up row, shape
        ``ids.shape + row_shape``.
      num_rows: the number of rows of the table (checked against the table when
        the rows are used).

    Returns:
      A :class:`SparseRows` with ``ids.size`` slots.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_lookahead import sparse_rows
      >>> rows = sparse_rows(jnp.array([3, 1, 3, -1]), jnp.ones((4, 2)), num_rows=5)
      >>> rows.ids
      Array([1, 3, 5, 5], dtype=int32)
      >>> rows.values
      Array([[1., 1.],
             [2., 2.],
             [0., 0.],
             [0., 0.]], dtype=float32)
    """
    _checks.check_count("sparse_rows(num_rows=...)", num_rows)
    ids = clean_ids(ids, num_rows, "sparse_rows(ids=...)")
    row_grads = jnp.asarray(row_grads)
    if row_grads.shape[: ids.ndim] != ids.shape:
        raise ValueError(
            "sparse_rows: row_grads must have shape ids.shape + row_shape;"
            f" got ids of shape {ids.shape} and row_grads of shape"
            f" {row_grads.shape}."
        )
    flat = SparseRows(
        ids.reshape(-1),
        row_grads.reshape((ids.size,) + row_grads.shape[ids.ndim :]),
        num_rows,
    )
    return _sort_and_sum(flat, num_rows)  # ids in the caller's order: no check


def gather_rows(table: jax.Array, ids) -> jax.Array:
    """``table[ids]``, with a zero row for every id outside the table.

    Args:
      table: the table, rows along axis 0.
      ids: integer row ids of any shape; ``-1`` and other ids outside the table
        read a zero row.

    Returns:
      An array of shape ``ids.shape + table.shape[1:]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_lookahead import gather_rows
      >>> gather_rows(jnp.arange(6.0).reshape(3, 2), jnp.array([2, -1, 3]))
      Array([[4., 5.],
             [0., 0.],
             [0., 0.]], dtype=float32)
    """
    table = jnp.asarray(table)  # NumPy tables too (a restored checkpoint)
    ids = clean_ids(ids, table.shape[0], "gather_rows(ids=...)")
    out_sharding = _gather_sharding(ids, table)
    if out_sharding is None:  # jax versions without explicit meshes lack the kwarg
        return table.at[ids].get(mode="fill", fill_value=0)
    return table.at[ids].get(mode="fill", fill_value=0, out_sharding=out_sharding)


def scatter_rows(table: jax.Array, ids: jax.Array, rows: jax.Array) -> jax.Array:
    """``table`` with ``table[ids] = rows``; ids outside the table are dropped."""
    table = jnp.asarray(table)
    ids = clean_ids(ids, table.shape[0])
    return table.at[ids].set(
        rows.astype(table.dtype), mode="drop", **keep_layout(table)
    )


def apply_sparse_updates(params, updates):
    """``optax.apply_updates`` that also applies :class:`SparseRows` leaves.

    A sparse leaf adds its rows in place (``param.at[ids].add``; padding ids
    dropped, repeated ids added up), so under ``jax.jit`` with the params
    donated the cost follows the number of rows, not the size of the table.
    Dense leaves are applied as ``optax.apply_updates`` does, and so are the
    rows of a table narrower than its updates (bfloat16 params, float32
    updates): each row's sum is rounded once, to the same bits as
    ``optax.apply_updates`` of the dense update.

    Args:
      params: the params.
      updates: updates with the params' structure, where a leaf may be a
        :class:`SparseRows` for a table.

    Returns:
      The updated params, each in its own dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_lookahead import apply_sparse_updates, sparse_rows
      >>> params = {"table": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}
      >>> rows = sparse_rows(jnp.array([1, -1]), jnp.ones((2, 2)), num_rows=4)
      >>> new = apply_sparse_updates(params, {"table": rows, "bias": jnp.ones(2)})
      >>> new["table"]  # the -1 was padding
      Array([[0., 0.],
             [1., 1.],
             [0., 0.],
             [0., 0.]], dtype=float32)
    """
    if params is None:
        raise ValueError(
            "apply_sparse_updates(params, updates): params is None; pass the"
            " params the updates apply to."
        )

    def apply(path, update, param):
        if param is None:
            return None
        if is_sparse(update):
            param = jnp.asarray(param)  # NumPy params too (a restored checkpoint)
            rows = checked_rows(update, param, jax.tree_util.keystr(path))
            if _narrower(param, rows.values):
                # Adding in the table's dtype would round the update, then the
                # sum: sum each row once in the wider dtype, round once.
                rows = coalesce(rows, param.shape[0])
                new_rows = add_update(gather_rows(param, rows.ids), rows.values)
                return scatter_rows(param, rows.ids, new_rows)
            return param.at[rows.ids].add(
                rows.values.astype(param.dtype), mode="drop", **keep_layout(param)
            )
        return add_update(param, update)

    try:
        return jax.tree_util.tree_map_with_path(
            apply, updates, params, is_leaf=lambda x: x is None or is_sparse(x)
        )
    except ValueError as error:
        if "tree" not in str(error).lower():
            raise
        raise ValueError(
            "apply_sparse_updates: updates and params must have the same tree"
            f" structure: {error}"
        ) from None


def _narrower(param: jax.Array, update: jax.Array) -> bool:
    """Whether ``param`` is a float of fewer bits than the float ``update``."""
    return all(jnp.issubdtype(x.dtype, jnp.floating) for x in (param, update)) and (
        jnp.finfo(param.dtype).bits < jnp.finfo(update.dtype).bits
    )


def add_update(param, update) -> jax.Array:
    """``param + update`` in ``param``'s dtype, as ``optax.apply_updates`` does.

    The sum is taken in the dtype standard promotion would choose (float32 for
    bfloat16 + float16; the update's dtype for a weakly typed param such as
    ``jnp.array(1.0)``), so the result is the same bits as
    ``optax.apply_updates`` gives, also under strict dtype promotion.
    """
    param, update = jnp.asarray(param), jnp.asarray(update)
    if jax.typeof(param).weak_type:  # promotion takes the update's dtype
        return (param + update).astype(param.dtype)
    if param.dtype != update.dtype and all(
        jnp.issubdtype(x.dtype, jnp.floating) for x in (param, update)
    ):
        bits = max(jnp.finfo(param.dtype).bits, jnp.finfo(update.dtype).bits)
        wide = jnp.float32 if bits <= 32 else jnp.float64
        return (param.astype(wide) + update.astype(wide)).astype(param.dtype)
    return (param + update).astype(param.dtype)


def _gather_sharding(ids, table):
    """The rows' sharding for a gather on an explicit-axes mesh, else ``None``.

    There JAX cannot choose the result's sharding of a gather from a row-sharded
    table; the rows follow the ids (replicated when the ids are on no mesh) and
    keep the table's columns whole. Elsewhere JAX chooses, and ``None`` says so.
    """
    mesh = _explicit_mesh(table)
    if mesh is None:
        return None
    spec = tuple(getattr(getattr(jax.typeof(ids), "sharding", None), "spec", ()))
    spec += (None,) * (ids.ndim - len(spec))
    return jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(*spec, *(None,) * (table.ndim - 1))
    )


def keep_layout(table) -> dict:
    """``out_sharding=`` for a scatter into ``table`` on an explicit-axes mesh."""
    if _explicit_mesh(table) is None:
        return {}
    return {"out_sharding": jax.typeof(table).sharding}


def _explicit_mesh(table):
    """The mesh of ``table`` if it has an explicit axis, else ``None``."""
    mesh = getattr(getattr(jax.typeof(table), "sharding", None), "mesh", None)
    explicit = getattr(jax.sharding, "AxisType", None)
    axis_types = tuple(getattr(mesh, "axis_types", ()))
    if explicit is None or explicit.Explicit not in axis_types:
        return None
    return mesh
