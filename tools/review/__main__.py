"""`python -m tools.review [cdk.out]`: write review/REVIEW.md and review/review.json.

The report goes outside the assembly, which every synth wipes, so the last report survives
for a reviewer, a CI artifact or a later comparison. REVIEW.md opens with one page answering
the reviewer's four questions; review.json holds the same facts as data (`tools.review.twin`).

Exit status 0 when the report was written (findings are for the reviewer to read), 2 when it
could not be (no assembly, unreadable template, cfn-lint broken). With `--strict`, 1 when
there is a CRITICAL ingress rule, an unacknowledged wildcard or nag finding, a stale
acknowledgement, a missing validation report or a cfn-lint error.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from tools.review.collect import build_review
from tools.review.lint import run_cfn_lint
from tools.review.render import render, summary_text
from tools.review.twin import render_json

DEFAULT_OUT_DIR = "review"
MARKDOWN = "REVIEW.md"
JSON = "review.json"


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
    args = parser.parse_args(argv)

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
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render(review))
    twin.write_text(render_json(review))
    print(summary_text(review))
    print(f"Wrote {markdown} and {twin}")
    flagged = (
        review.exposure.critical
        or review.unacknowledged_wildcards
        or review.nag.open
        or review.nag.stale
        or not review.report_found
        or review.lint.errors
    )
    return 1 if args.strict and flagged else 0


if __name__ == "__main__":
    sys.exit(main())
