"""`make deploy` runs this first: refuse to deploy a configuration the operator has not stated.

`onprem_cidrs` has a built-in default (192.168.0.0/16) so that `make synth`, `make test` and
`make review` work on a fresh checkout. Deployed, that default would open Consul to a network
that is probably not the operator's and route nothing to the real hosts. So a deploy needs
`onprem_cidrs` set, in cdk.json's context or with `-c onprem_cidrs=...` (the same context
`make synth ARGS=...` and `make preflight` read), even when the value is the default's.

    python -m tools.deploy_gate [-c key=value ...] [--cdk-json PATH]

Exit 0 when the configuration may be deployed; 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mesh_stack.config import FIELDS, MeshConfig
from mesh_stack.config_errors import ConfigError
from tools.preflight import CDK_JSON, context_from

# Keys a deploy refuses to take from the built-in defaults.
MUST_BE_STATED = ("onprem_cidrs",)


def refusal(context: Mapping[str, object]) -> str | None:
    """Why `context` must not be deployed, in one line, or None."""
    try:
        MeshConfig.from_context(context)
    except ConfigError as err:
        return f"error: {err}"
    for key in MUST_BE_STATED:
        if key not in context:
            default = ",".join(FIELDS[key].default)
            return (
                f"refusing to deploy: {key} is still the built-in default ({default}); state "
                f'your on-prem networks in cdk.json or with ARGS="-c {key}=<cidr>,..." '
                "(README, Before you deploy)"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy_gate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-c", "--context", action="append", default=[], metavar="KEY=VALUE", dest="context"
    )
    parser.add_argument("--cdk-json", type=Path, default=CDK_JSON)
    # Other cdk arguments in ARGS (e.g. --profile) are for cdk itself, not for this gate.
    args, _ = parser.parse_known_args(argv)
    try:
        context = context_from(args.context, args.cdk_json)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    reason = refusal(context)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
