"""`python -m tools.review [cdk.out]`: write review/REVIEW.md and review/review.json.

The report goes outside the assembly, which every synth wipes, so the last report survives
for a reviewer, a CI artifact or a later comparison. REVIEW.md opens with one page answering
the reviewer's four questions; review.json holds the same facts as data (`tools.review.twin`).

With `--baseline OLD` (a cloud assembly or a saved review.json) or `--baseline-ref REF` (a git
ref, synthesized in a temporary export: `tools.review.baseline`), REVIEW.md opens with "Changes
since baseline": what the change opens, grants or decrypts (`tools.review.diff`). A baseline that
cannot be had is one line, and the report of this assembly is still written.

Exit status 0 when the report was written (findings are for the reviewer to read), 2 when it
could not be (no assembly, unreadable template, cfn-lint broken). With `--strict`, 1 when
there is a CRITICAL ingress rule, an unacknowledged wildcard or nag finding, a stale
acknowledgement, a missing validation report or a cfn-lint error. With `--fail-on broadening`
(or `any`), 1 when the comparison has such a change, or when there was no baseline to compare
with (fail closed); the offending lines are printed.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import sys
from pathlib import Path

from tools.review.baseline import BaselineError, from_path, from_ref
from tools.review.changes import FAIL_ON, Comparison, compare_with, console, offending, unavailable
from tools.review.collect import Review, build_review
from tools.review.lint import run_cfn_lint
from tools.review.render import render, summary_text
from tools.review.twin import facts, render_json

DEFAULT_OUT_DIR = "review"
MARKDOWN = "REVIEW.md"
JSON = "review.json"
SYNTH_LOG = "baseline-synth.log"
FAIL_ON_FILE = "fail-on.txt"  # the offending lines, only when --fail-on failed (for CI)


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--vpc-cidr must be a CIDR such as 10.0.0.0/16, got {text!r}"
        ) from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.review", description=__doc__)
    parser.add_argument("outdir", nargs="?", default="cdk.out", help="cloud assembly folder")
    parser.add_argument(
        "--out-dir",
        default=DEFAULT_OUT_DIR,
        help=f"folder for {MARKDOWN} and {JSON} (default: {DEFAULT_OUT_DIR})",
    )
    parser.add_argument(
        "--output", help=f"path of the Markdown report instead; {JSON} is written beside it"
    )
    parser.add_argument(
        "--vpc-cidr",
        action="append",
        default=[],
        type=_cidr,
        help="a CIDR of the VPC when it is imported rather than created (repeatable)",
    )
    parser.add_argument("--skip-cfn-lint", action="store_true", help="do not run cfn-lint")
    parser.add_argument("--strict", action="store_true", help="exit 1 on flagged findings")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument(
        "--baseline", metavar="OLD", help="compare with this cloud assembly or review.json"
    )
    baseline.add_argument(
        "--baseline-ref",
        metavar="REF",
        help="compare with this git ref, synthesized with this checkout's toolchain",
    )
    parser.add_argument(
        "--cdk-args",
        default="",
        help="extra `cdk synth` arguments for the baseline ref, e.g. '-c server_count=5' "
        "(make passes its ARGS, so both sides get the same overrides)",
    )
    parser.add_argument(
        "--fail-on",
        choices=sorted(FAIL_ON),
        help="exit 1 when the comparison has a broadening change (or any change)",
    )
    args = parser.parse_args(argv)
    if args.fail_on and not (args.baseline or args.baseline_ref):
        parser.error("--fail-on needs --baseline or --baseline-ref")

    outdir = Path(args.outdir)
    try:
        review = build_review(
            outdir,
            vpc_cidrs=args.vpc_cidr,
            linter=None if args.skip_cfn_lint else run_cfn_lint,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    markdown = Path(args.output) if args.output else Path(args.out_dir) / MARKDOWN
    twin = markdown.parent / JSON
    comparison = _comparison(args, review, markdown.parent / SYNTH_LOG)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    (markdown.parent / FAIL_ON_FILE).unlink(missing_ok=True)
    markdown.write_text(render(review, comparison))
    twin.write_text(render_json(review))
    print(summary_text(review))
    print(f"Wrote {markdown} and {twin}")
    failed = False
    if comparison is not None:
        print(console(comparison))
        if args.fail_on:
            lines = offending(comparison, args.fail_on)
            print("\n".join(lines) or f"--fail-on {args.fail_on}: nothing to approve")
            if lines:
                (markdown.parent / FAIL_ON_FILE).write_text("\n".join(lines) + "\n")
            failed = bool(lines)
    flagged = (
        review.exposure.critical
        or review.unacknowledged_wildcards
        or review.nag.open
        or review.nag.stale
        or not review.report_found
        or review.lint.errors
    )
    return 1 if (args.strict and flagged) or failed else 0


def _comparison(args: argparse.Namespace, review: Review, log: Path) -> Comparison | None:
    """The comparison the arguments ask for; one line on stderr when there is no baseline."""
    if not (args.baseline or args.baseline_ref):
        return None
    name = args.baseline_ref or args.baseline
    log.unlink(missing_ok=True)
    try:
        if args.baseline_ref:
            found = from_ref(
                Path.cwd(),
                args.baseline_ref,
                cdk_args=shlex.split(args.cdk_args),
                vpc_cidrs=args.vpc_cidr,
                log=log,
            )
        else:
            found = from_path(Path(args.baseline), vpc_cidrs=args.vpc_cidr)
    except BaselineError as err:
        print(
            f"{err}; the report of {args.outdir} is written without a comparison", file=sys.stderr
        )
        return unavailable(f"`{name}`", str(err))
    for warning in found.warnings:
        print(f"baseline: warning: {warning}", file=sys.stderr)
    return compare_with(found.name, found.facts, facts(review), found.how)


if __name__ == "__main__":
    sys.exit(main())
