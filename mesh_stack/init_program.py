"""The Envoy init container's program: identity.py + envoy.py + assets/envoy_init.py as one string.

Why one string: the init container uses a stock Python image (no project image to build, no
Docker at synth time), so its code travels in the task definition as `python3 -c <program>`.
The registrar's `identity.py` goes in verbatim (minus comments), which keeps the IDs Envoy
presents and the IDs the registrar writes the output of one function.

Standard library only, so tests import it without CDK.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
IDENTITY_SOURCE = ROOT / "lambda" / "registrar" / "identity.py"
ENVOY_SOURCE = ROOT / "mesh_stack" / "envoy.py"
INIT_SOURCE = ROOT / "mesh_stack" / "assets" / "envoy_init.py"

# Must equal envoy_init.IDENTITY_MODULE / ENVOY_MODULE; the contract test runs the result.
_PRELOADED = (("consul_mesh_identity", IDENTITY_SOURCE), ("consul_mesh_envoy", ENVOY_SOURCE))

# One argument of a Linux exec is capped at 128 KiB (MAX_ARG_STRLEN) and a task definition at
# 64 KiB; stay far below both so several containers and labels still fit.
MAX_PROGRAM_BYTES = 24 * 1024


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


def compact(source: str) -> str:
    """Same code without comments and docstrings (ast round trip), to save task-definition bytes."""
    return ast.unparse(_strip_docstrings(ast.parse(source)))


def combined_source() -> str:
    """A program that preloads the shared modules, then runs envoy_init as `__main__`."""
    lines = [
        "import sys, types",
        "def _load(name, src):",
        "    module = types.ModuleType(name)",
        "    sys.modules[name] = module",
        "    exec(compile(src, name + '.py', 'exec'), module.__dict__)",
    ]
    for name, path in _PRELOADED:
        lines.append(f"_load({name!r}, {compact(path.read_text(encoding='utf-8'))!r})")
    init = compact(INIT_SOURCE.read_text(encoding="utf-8"))
    lines.append(f"exec(compile({init!r}, 'envoy_init.py', 'exec'), {{'__name__': '__main__'}})")
    program = "\n".join(lines) + "\n"
    size = len(program.encode("utf-8"))
    if size > MAX_PROGRAM_BYTES:
        raise ValueError(
            f"the Envoy init program is {size} bytes, above the {MAX_PROGRAM_BYTES} byte budget "
            "for a task definition command; trim identity.py, envoy.py or envoy_init.py"
        )
    return program


# Set explicitly rather than left to the image: a hardened mirror of python with
# `ENTRYPOINT ["python"]` or a non-root `USER` (common for approved base images) would otherwise
# run `python python3 -c ...` or fail to hand the bootstrap and the admin directory to uid 1337.
ENTRY_POINT = ["python3"]
USER = "0"  # root: it chowns the bootstrap file and the admin directory to Envoy's uid


def command() -> list[str]:
    """The init container's command, after ENTRY_POINT."""
    return ["-c", combined_source()]


def load_identity() -> ModuleType:
    """The registrar's `identity` module (labels, naming) for synth-time code, loaded by path.

    `lambda/registrar` is not a package of the CDK app; loading the file keeps one source of
    truth without copying it or putting the Lambda's directory on the CDK app's import path.
    """
    return _load("consul_mesh_identity", IDENTITY_SOURCE)


def load_init() -> ModuleType:
    """The init program itself (assets/envoy_init.py), for a synth-time dry run."""
    return _load("consul_mesh_envoy_init", INIT_SOURCE)


def _load(name: str, path: Path) -> ModuleType:
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module
