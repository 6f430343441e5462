"""What every benchmark shares: the malloc setting, the environment header and
the results file.

Malloc. glibc maps and unmaps temporaries over 32 MiB on every step, which can
dominate CPU timings, and users run with glibc's default.
So every benchmark measures under two settings, ``--malloc default`` (what
users get) and ``--malloc tuned`` (the tunables below, which keep large
temporaries in the heap), and ``--malloc both`` (the default) runs the tuned
one in a child process started with the tunables, then the default one in
this process. The tunables only take effect at process start: a process whose
environment does not match the setting it was asked for re-executes itself
with the right one, and says so.

Results file. One JSON file per benchmark and machine::

    {"runs": {"default": {"header": {...}, "results": ...},
              "tuned": {"header": {...}, "results": ...}}}

A run writes its malloc setting's entry and keeps the other; results of the
same setting merge with earlier ones (one workload or table size per process
keeps the heap small), the newer replacing those of the same configuration.
``benchmarks/write_report.py`` builds BENCHMARKS.md from these files.

Compiled programs. A step jitted with ``jax.jit`` is one program, whose
lookahead sync and first update are conditionals (or selects) inside it; one
run through ``optax_lookahead.lookahead_jit`` is one program per phase,
chosen on the host. :func:`phase_programs` gives, for either, the program and
the path through it of a steady-state non-sync step and of a sync step, which
the benchmarks read their bytes, copies and temporaries from.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

from optax_lookahead_experiments.run_info import cpu_model

# The tuned setting's glibc malloc tunables: one arena, no mmap for large
# blocks, and no trimming of the heap's top, so that a step's large
# temporaries reuse heap memory instead of being mapped and faulted in anew.
GLIBC_TUNABLES = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
    "glibc.malloc.trim_threshold=17179869184"
)
# The environment each setting runs under (None: GLIBC_TUNABLES unset).
MALLOC_SETTINGS = {"default": None, "tuned": GLIBC_TUNABLES}
# The order in which runs are shown.
MALLOC_ORDER = ("default", "tuned")

# When this process began measuring (after settle_malloc, which may first run
# the tuned setting in a child), for the header's wall_seconds.
_measuring_since = time.perf_counter()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--malloc`` and ``--out``."""
    parser.add_argument(
        "--malloc",
        choices=(*MALLOC_ORDER, "both"),
        default="both",
        help="glibc malloc setting to measure under: glibc's default, the"
        " tunables in benchmarks/harness.py, or both (the tuned one in a child"
        " process); on a GPU machine, 'default'",
    )
    parser.add_argument(
        "--out", help="write the results as JSON here (merged with what is there)"
    )


def current_malloc() -> str | None:
    """The setting this process started under, or None for another one."""
    value = os.environ.get("GLIBC_TUNABLES")
    for name, wanted in MALLOC_SETTINGS.items():
        if value == wanted:
            return name
    return None


def settle_malloc(module: str, args: argparse.Namespace) -> str:
    """Puts this process under the malloc setting it is to measure; returns it.

    Re-executes ``python -m module`` with the same arguments when the
    environment does not match. For ``--malloc both`` it first runs the tuned
    setting in a child (writing to ``args.out``, or to a temporary file that
    :func:`write_run` then merges), and returns ``"default"``.
    """
    wanted = "default" if args.malloc == "both" else args.malloc
    if current_malloc() != wanted:
        env_value = MALLOC_SETTINGS[wanted]
        if env_value is None:
            os.environ.pop("GLIBC_TUNABLES", None)
        else:
            os.environ["GLIBC_TUNABLES"] = env_value
        print(f"re-executing with GLIBC_TUNABLES={env_value or '(unset)'}", flush=True)
        os.execv(sys.executable, [sys.executable, "-m", module, *_original_arguments()])
    if args.malloc == "both":
        if not args.out:
            handle, args.out = tempfile.mkstemp(suffix=".json")
            os.close(handle)
            os.unlink(args.out)
            args.temporary_out = True
        child_args = _with_option(_original_arguments(), "--malloc", "tuned")
        child_args = _with_option(child_args, "--out", args.out)
        env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES)
        print(f"== malloc tuned, in a child (GLIBC_TUNABLES={GLIBC_TUNABLES})")
        subprocess.run([sys.executable, "-m", module, *child_args], env=env, check=True)
        print("== malloc default, in this process", flush=True)
    global _measuring_since
    _measuring_since = time.perf_counter()
    return wanted


def _original_arguments() -> list[str]:
    return sys.argv[1:]


def _with_option(arguments: list[str], option: str, value: str) -> list[str]:
    """``arguments`` with ``option`` (and its value) replaced by ``value``."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == option:
            skip = True
        elif not argument.startswith(option + "="):
            kept.append(argument)
    return [*kept, option, value]


def environment(module: str, malloc: str, **extra) -> dict:
    """The header of a run: versions, machine, malloc setting, command, and
    the seconds this setting's run took so far (``wall_seconds``: compiling
    and measuring, not the child of ``--malloc both``)."""
    import jax
    import optax

    device = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "device": f"{device.platform}: {device.device_kind}",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "malloc": malloc,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "command": " ".join(["python -m", module, *_original_arguments()]),
        "wall_seconds": round(time.perf_counter() - _measuring_since, 1),
        **extra,
    }


def read(path) -> dict:
    """A results file, or an empty one where there is none."""
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"runs": {}}


def write_run(
    path,
    header: dict,
    results,
    merge: Callable | None = None,
) -> dict:
    """Writes this run into ``path`` under ``header["malloc"]``; returns the file.

    ``merge(earlier, results)`` combines the results with those of an earlier
    run of the same setting (None: replace them); the header's command then
    lists both commands, and its ``wall_seconds`` is their sum.
    """
    data = read(path)
    earlier = data["runs"].get(header["malloc"])
    if earlier is not None and merge is not None:
        combined = merge(earlier["results"], results)
        if combined != results:
            header = {
                **header,
                "command": earlier["header"]["command"] + "; " + header["command"],
            }
            if "wall_seconds" in header:  # the time of all the commands listed
                header["wall_seconds"] += earlier["header"].get("wall_seconds", 0.0)
        results = combined
    data["runs"][header["malloc"]] = {"header": header, "results": results}
    data["runs"] = {m: data["runs"][m] for m in MALLOC_ORDER if m in data["runs"]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return data


def finish(args: argparse.Namespace) -> None:
    """Removes the temporary results file of a ``--malloc both`` run."""
    if getattr(args, "temporary_out", False):
        os.unlink(args.out)


# ----------------------------------------------------------------------------
# Compiled programs of a step, per phase.

# The variant-name suffix of a step run through lookahead_jit, not jax.jit.
LOOKAHEAD_JIT = " [lookahead_jit]"


def uses_lookahead_jit(variant: str) -> bool:
    """Whether a variant runs its step through ``lookahead_jit``."""
    return variant.endswith(LOOKAHEAD_JIT)


def jit_for(variant: str) -> Callable:
    """``jax.jit`` or ``lookahead_jit``, as the variant's name says."""
    import jax

    from optax_lookahead import lookahead_jit

    return lookahead_jit if uses_lookahead_jit(variant) else jax.jit


def at_step(tree, step: int):
    """``tree`` with the step count of every lookahead state in it set to
    ``step`` (the other leaves are kept, not copied)."""
    import jax
    import jax.numpy as jnp

    from optax_lookahead import LookaheadState

    def set_step(node):
        if isinstance(node, LookaheadState):
            return node._replace(step=jnp.full_like(node.step, step))
        return node

    return jax.tree.map(
        set_step, tree, is_leaf=lambda node: isinstance(node, LookaheadState)
    )


def phase_programs(jitted, params, state, batch, sync_period: int) -> dict:
    """``{"non_sync": (compiled, path), "sync": (compiled, path)}`` of a step.

    ``jitted`` is what a benchmark calls: ``jax.jit(step)``, whose one program
    serves both phases (the paths through its conditionals from
    :func:`hlo_bytes.sync_path`), or ``lookahead_jit(step)``, lowered for each
    phase's own program: with the lookahead state's step count set to 1 (a
    non-sync step) and to ``sync_period - 1`` (a steady-state sync). The first
    update's program runs once and is not among them. In a phase's program the
    path is 0: any conditional left there (none in this version; it would not
    be lookahead's sync) takes its false branch. The sync's path is None (no
    sync figures) where a ``jax.jit`` program's conditionals are not the two
    :func:`hlo_bytes.sync_path` knows. Lowering the object the
    benchmark calls, with live buffers of the same shapes, reuses its
    compilation (JAX caches it).

    Raises RuntimeError if ``lookahead_jit`` warns that no lookahead update
    used the host's step count (the variant would measure the in-graph form).
    """
    from benchmarks import hlo_bytes
    from optax_lookahead import LookaheadJit

    if not isinstance(jitted, LookaheadJit):
        compiled = jitted.lower(params, state, batch).compile()
        try:
            sync = hlo_bytes.sync_path(compiled.as_text())
        except RuntimeError as error:  # a staging this version does not know
            print(f"  no sync figures: {error}", flush=True)
            sync = None
        return {"non_sync": (compiled, 0), "sync": (compiled, sync)}
    programs = {}
    for label, step in (("non_sync", 1), ("sync", sync_period - 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lowered = jitted.lower(params, at_step(state, step), batch)
        for warning in caught:
            if str(warning.message).startswith("lookahead_jit:"):
                raise RuntimeError(f"{label} program: {warning.message}")
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        programs[label] = (lowered.compile(), 0)
    return programs
