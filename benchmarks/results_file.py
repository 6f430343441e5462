"""The JSON a benchmark leaves for ``write_report.py``: header, results, table."""

import json
import os


def write(path: str, header: dict, results, table: str) -> None:
    """Writes one benchmark's run to ``path``, creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            {"header": header, "results": results, "markdown": table}, f, indent=1
        )
