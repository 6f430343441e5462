"""Stable CPU timings: glibc malloc tunables, set before the process starts.

glibc maps and unmaps temporaries over 32 MiB on every step, which can
dominate CPU timings (DESIGN.md section 3). The tunables only take effect at
process start, so a benchmark calls this first thing and is re-executed with
them; ``--no-reexec`` (used on GPU machines) skips it.
"""

import os
import sys

GLIBC_TUNABLES = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
    "glibc.malloc.trim_threshold=17179869184"
)


def reexec_with_malloc_tunables() -> None:
    if "--no-reexec" in sys.argv or os.environ.get("GLIBC_TUNABLES") is not None:
        return
    os.environ["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    print(f"re-executing with GLIBC_TUNABLES={GLIBC_TUNABLES}", flush=True)
    os.execv(sys.executable, [sys.executable, *sys.argv])
