"""Bytes a compiled program moves along one path through its conditionals.

XLA's ``cost_analysis()`` reports a ``conditional`` as its most expensive
branch, so a lookahead step is always costed as a sync step. This module reads
the optimized HLO text and sums, for every instruction that runs on the chosen
path, the bytes of its operands and its result, as XLA's own cost model does
for fusions (a ``tuple`` counts, as there, 8 bytes per element for its
table of pointers). On a program without conditionals (and without the
scatters and gathers below) the sum equals ``cost_analysis()["bytes
accessed"]``; tests/test_benchmarks.py checks this.

A path names a branch for each conditional it reaches, in the order the
program reaches them (nested ones included), or one branch for all of them.

Two deliberate differences, for the sparse optimizer's row updates: a scatter
into a buffer it updates in place (``table.at[ids].set(rows)`` on a donated
table) is counted as what it moves, the indices and rows read and the rows
written; and a gather reads the rows it returns, not its whole operand.
``cost_analysis()`` counts the whole table in both cases.
"""

import re

_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
}

# What XLA's cost analysis counts for each element of a tuple it builds.
_POINTER_BYTES = 8

# Instructions that move no data of their own.
_FREE = {
    "parameter",
    "constant",
    "get-tuple-element",
    "bitcast",
    "after-all",
    "partition-id",
    "replica-id",
    "opt-barrier",
}

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>.+?) "
    r"(?P<op>[\w\-]+)\((?P<args>.*?)\)(?P<attrs>.*)$"
)


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
        size = _BYTES.get(dtype)
        if size is None:
            continue
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += size * count
    return total


def _computations(hlo_text: str):
    """Maps computation name -> list of (name, shape, op, operand names, attrs);
    the entry computation is also under ``"__entry__"``, and each
    computation's root op under ``("__root__", name)``."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if header:
            current = header.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                computations["__entry__"] = computations[current]
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            operands = re.findall(r"%([\w.\-]+)", match.group("args"))
            if line.lstrip().startswith("ROOT "):
                computations[("__root__", current)] = match.group("op")
            computations[current].append(
                (
                    match.group("name"),
                    match.group("shape"),
                    match.group("op"),
                    operands,
                    match.group("attrs"),
                )
            )
    return computations


def path_instructions(hlo_text: str, branch):
    """Yields (result shape, op, bytes accessed) for each instruction that runs
    when the program's conditionals take ``branch``: one branch index for all
    of them, or a sequence of one per conditional in the order they are reached
    (0 is ``lax.cond``'s false branch, 1 its true branch). Loop bodies are
    counted once. ``sparse_lazy``'s check of its rows' order takes no entry:
    the path always takes its branch for rows in order, which is what
    ``sparse_rows`` gives and the benchmarks feed it."""
    computations = _computations(hlo_text)
    if isinstance(branch, int):
        choices = None
    else:
        choices = iter(branch)

    def choose(names):
        if choices is None:
            chosen = branch
        else:
            chosen = next(choices, None)
            if chosen is None:
                raise ValueError(
                    f"the path {tuple(branch)} names fewer branches than the"
                    " program has conditionals (see conditionals())"
                )
        return names[min(chosen, len(names) - 1)]

    def walk(computation: str):
        instructions = computations[computation]
        shapes = {name: shape for name, shape, *_ in instructions}
        for _, shape, op, operands, attrs in instructions:
            if op in _FREE:
                continue
            if op == "tuple":  # XLA counts its table of pointers, not the data
                yield shape, op, _POINTER_BYTES * len(operands)
                continue
            if op == "conditional":
                names = _branches(attrs)
                if _is_order_check(computations, names):
                    yield from walk(names[0])  # rows in order: no sort
                else:
                    yield from walk(choose(names))
                continue
            if op in ("while", "call"):
                body = re.search(r"(?:body|to_apply)=%([\w.\-]+)", attrs)
                if body:
                    yield from walk(body.group(1))
                continue
            called = re.search(r"calls=%([\w.\-]+)", attrs)
            root = computations.get(("__root__", called.group(1))) if called else op
            if root == "scatter" and operands:
                # In place: read indices and rows, write the rows.
                rows = sum(_shape_bytes(shapes.get(o, "")) for o in set(operands[1:]))
                yield shape, op, 2 * rows
                continue
            gathered = (
                _gathered_operands(computations, called.group(1)) if called else set()
            )
            if op == "gather":
                gathered = {0}
            out = _shape_bytes(shape)
            reads = sum(
                min(_shape_bytes(shapes.get(o, "")), out)
                if index in gathered
                else _shape_bytes(shapes.get(o, ""))
                for index, o in enumerate(dict.fromkeys(operands))
            )
            yield shape, op, reads + out

    yield from walk("__entry__")


def _gathered_operands(computations, fused: str) -> set:
    """Indices of a fusion's operands that it only reads through a gather."""
    instructions = computations.get(fused, [])
    params = {}  # fused parameter name -> operand number (param_N.M is operand N)
    for name, _, op, _, _ in instructions:
        number = re.match(r"param_(\d+)", name) if op == "parameter" else None
        if number:
            params[name] = int(number.group(1))
    gathered = set()
    for _, _, op, operands, _ in instructions:
        if op == "gather" and operands and operands[0] in params:
            gathered.add(params[operands[0]])
    return gathered


def conditionals(hlo_text: str) -> int:
    """How many conditionals the path of false branches reaches, not counting
    ``sparse_lazy``'s order check (see :func:`path_instructions`)."""
    return sum(op == "conditional" for _, op, _ in _all_ops(hlo_text))


def _branches(attrs: str) -> list:
    """A conditional's branch computations, false (index 0) first."""
    branches = re.search(r"branch_computations=\{([^}]*)\}", attrs)
    if branches:
        return re.findall(r"%([\w.\-]+)", branches.group(1))
    false = re.search(r"false_computation=%([\w.\-]+)", attrs)
    true = re.search(r"true_computation=%([\w.\-]+)", attrs)
    return [false.group(1), true.group(1)]


def _is_order_check(computations, names) -> bool:
    """Whether a conditional is ``sparse_lazy``'s check of the rows' order: a
    branch that sorts (rows out of order) beside one that does not (branch 0,
    the rows ``sparse_rows`` gives)."""
    return (
        len(names) == 2
        and _sorts(computations, names[1])
        and not _sorts(computations, names[0])
    )


def _sorts(computations, name: str) -> bool:
    """Whether a computation, or one it calls, sorts."""
    for _, _, op, _, attrs in computations.get(name, ()):
        if op == "sort":
            return True
        called = re.findall(
            r"(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-]+)",
            attrs,
        )
        if any(_sorts(computations, c) for c in called if c != name):
            return True
    return False


def _all_ops(hlo_text: str):
    """Like :func:`path_instructions` on the false branches, conditionals
    included (with no bytes of their own)."""
    computations = _computations(hlo_text)

    def walk(computation: str):
        for _, shape, op, _, attrs in computations[computation]:
            if op == "conditional":
                names = _branches(attrs)
                if not _is_order_check(computations, names):
                    yield shape, op, 0
                yield from walk(names[0])
            elif op in ("while", "call"):
                body = re.search(r"(?:body|to_apply)=%([\w.\-]+)", attrs)
                if body:
                    yield from walk(body.group(1))

    yield from walk("__entry__")


def path_bytes(hlo_text: str, branch) -> int:
    """Bytes accessed along the path of :func:`path_instructions`."""
    return sum(moved for _, _, moved in path_instructions(hlo_text, branch))


def path_copies(hlo_text: str, branch, shapes) -> int:
    """``copy`` instructions along the path whose result has one of ``shapes``
    (strings such as ``"f32[2048,2048]"``)."""
    return sum(
        op in ("copy", "copy-start") and re.sub(r"\{.*\}", "", shape) in shapes
        for shape, op, _ in path_instructions(hlo_text, branch)
    )


# Branches a path names for conditionals nested inside lookahead's sync: their
# false branch (more than any step has; extra entries are never read).
_NESTED = (0,) * 16


def sync_path(hlo_text: str):
    """The path a steady-state sync step takes through a lookahead step compiled
    with ``jax.jit`` (not the first update).

    A lookahead step staged with ``lax.cond`` has two conditionals on its
    non-sync path, in this order: the first update's (take the slow weights
    from the params, at step 0 only) and the sync's. A sync step takes the
    first's false branch and the second's true one; any conditional nested in
    the sync takes its false branch. A program without conditionals (the sync
    staged as a select, or a program that ``lookahead_jit`` compiled for one
    phase) has one path, 0.
    """
    count = conditionals(hlo_text)
    if count == 0:
        return 0
    if count == 2:
        return (0, 1, *_NESTED)
    raise RuntimeError(
        f"expected lookahead's two conditionals (first update, sync), found"
        f" {count}: update hlo_bytes.sync_path to the library's staging"
    )
