"""Facts about the machine and software a result was measured on, for logs."""

import os
import platform
import sys
from importlib import metadata


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Python and package versions, CPU model and count, JAX's devices and its
    default matmul precision (None: JAX's default, which on recent NVIDIA GPUs
    may compute float32 products in TensorFloat32)."""
    import jax  # here, so that reading this module does not start JAX

    versions = {}
    for package in ("jax", "jaxlib", "optax", "flax", "numpy", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "python": sys.version.split()[0],
        "versions": versions,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
        "matmul_precision": jax.config.jax_default_matmul_precision,
    }


def device() -> str:
    """The kind of JAX's first device, e.g. ``cpu`` or ``NVIDIA H100 80GB HBM3``."""
    import jax

    first = jax.devices()[0]
    return f"{first.platform}: {first.device_kind}"
