"""Print the README's configuration reference table from mesh_stack/config.py.

`python -m tools.config_table` prints it; tests/infra/test_readme.py fails when the README's
table and FIELDS disagree, so paste this output into the README after changing a key.
"""

from __future__ import annotations

import json

from mesh_stack.config import FIELDS


def table() -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, spec in FIELDS.items():
        rows.append(f"| `{key}` | `{json.dumps(spec.default)}` | {spec.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
