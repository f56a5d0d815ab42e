"""Load a module of a Lambda asset under a name of its own, without leaving the asset on sys.path.

Every asset is a flat module tree, and two of them have a `handler.py`. Putting an asset's
directory on sys.path for good makes a later plain `import handler` in another test resolve to
whichever asset came first, so the suite would pass or fail by test order. This loads the file
under `<asset>_<module>` with the asset's directory on sys.path only while the module (and the
siblings it imports at import time) execute.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

LAMBDA = Path(__file__).resolve().parents[2] / "lambda"


def load(asset: str, module: str) -> ModuleType:
    directory = LAMBDA / asset
    spec = importlib.util.spec_from_file_location(f"{asset}_{module}", directory / f"{module}.py")
    assert spec is not None
    assert spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses look their module up there
    before = set(sys.modules)
    sys.path.insert(0, str(directory))
    try:
        spec.loader.exec_module(loaded)
    finally:
        sys.path.remove(str(directory))
    # Siblings it imported stay reachable through `loaded`; under their plain names they would
    # shadow another asset's module of the same name.
    for name in set(sys.modules) - before:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if Path(origin).parent == directory:
            sys.modules[f"{asset}_{name}"] = sys.modules.pop(name)
    return loaded
