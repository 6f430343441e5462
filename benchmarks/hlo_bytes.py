"""Bytes a compiled program moves along one path through its conditionals.

XLA's ``cost_analysis()`` reports a ``conditional`` as its most expensive
branch, so a lookahead step is always costed as a sync step. This module reads
the optimized HLO text and sums, for every instruction that runs on the chosen
path, the bytes of its operands and its result, as XLA's own cost model does
for fusions; the benchmark checks it against ``cost_analysis()`` on programs
without conditionals.

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

# Instructions that move no data of their own.
_FREE = {
    "parameter",
    "constant",
    "tuple",
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


def path_instructions(hlo_text: str, branch: int):
    """Yields (result shape, op, bytes accessed) for each instruction that runs
    when every ``conditional`` takes ``branch`` (0 is ``lax.cond``'s false
    branch, 1 its true branch). Loop bodies are counted once."""
    computations = _computations(hlo_text)

    def walk(computation: str):
        instructions = computations[computation]
        shapes = {name: shape for name, shape, *_ in instructions}
        for _, shape, op, operands, attrs in instructions:
            if op in _FREE:
                continue
            if op == "conditional":
                branches = re.search(r"branch_computations=\{([^}]*)\}", attrs)
                if branches:
                    names = re.findall(r"%([\w.\-]+)", branches.group(1))
                else:  # true_computation=..., false_computation=...
                    false = re.search(r"false_computation=%([\w.\-]+)", attrs)
                    true = re.search(r"true_computation=%([\w.\-]+)", attrs)
                    names = [false.group(1), true.group(1)]
                yield from walk(names[min(branch, len(names) - 1)])
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


def path_bytes(hlo_text: str, branch: int) -> int:
    """Bytes accessed along the path of :func:`path_instructions`."""
    return sum(moved for _, _, moved in path_instructions(hlo_text, branch))


def path_copies(hlo_text: str, branch: int, shapes) -> int:
    """``copy`` instructions along the path whose result has one of ``shapes``
    (strings such as ``"f32[2048,2048]"``)."""
    return sum(
        op in ("copy", "copy-start") and re.sub(r"\{.*\}", "", shape) in shapes
        for shape, op, _ in path_instructions(hlo_text, branch)
    )
