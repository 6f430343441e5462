"""Gives the whole pytest run eight host devices, for pmap, meshes and shard_map.

This must run before jax is imported anywhere, which is why it sits at the root
and not in tests/conftest.py.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
