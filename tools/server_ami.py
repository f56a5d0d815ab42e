"""`make refresh-ami` and the deploy gate for the Consul servers' AMI (mesh_stack/server_image.py).

    python -m tools.server_ami refresh [-c key=value ...]   # needs AWS credentials
    python -m tools.server_ami check   [-c key=value ...]   # no credentials; `make deploy` runs it

`refresh` asks SSM for the current Amazon Linux 2023 image of the configured region and the
instance type's architecture (`GetParameter` on the public parameter), checks with EC2
`DescribeImages` that it is an available image of that architecture, and writes it into
`server-ami.json`. Commit the change: the next deploy replaces the servers one at a time,
behind the health gate (docs/operations.md, "Upgrade Consul without losing quorum").

`check` exits 1 with one line when the servers would launch from no recorded image.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from mesh_stack import server_image
from mesh_stack.config import MeshConfig
from mesh_stack.config_errors import ConfigError
from tools.preflight import CDK_JSON, context_from


def refresh(
    config: MeshConfig,
    *,
    ssm: Any,
    ec2: Any,
    path: Path = server_image.RECORD,
    now: datetime | None = None,
) -> tuple[server_image.RecordedImage | None, server_image.RecordedImage]:
    """Record the current image for the config's region and architecture: (old, new)."""
    parameter = server_image.parameter_name(config.arm64)
    image_id = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    images = ec2.describe_images(ImageIds=[image_id])["Images"]
    want = server_image.architecture(config.arm64)
    if len(images) != 1:
        raise RuntimeError(f"{parameter} names {image_id}, which EC2 does not describe")
    (image,) = images
    if image.get("Architecture") != want or image.get("State") != "available":
        raise RuntimeError(
            f"{parameter} names {image_id}: architecture {image.get('Architecture')}, "
            f"state {image.get('State')}; expected an available {want} image"
        )
    key = server_image.record_key(config.region, config.arm64)
    record = server_image.load_record(path)
    old = record.get(key)
    new = server_image.RecordedImage(
        image_id=image_id,
        name=str(image.get("Name", "")),
        parameter=parameter,
        recorded_at=(now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    if old is not None and old.image_id == new.image_id:
        return old, old
    record[key] = new
    server_image.save_record(record, path)
    return old, new


def check(config: MeshConfig, path: Path = server_image.RECORD) -> str | None:
    """The one-line warning when no image is fixed (the fleet follows the public parameter)."""
    _, real = server_image.resolve(
        server_ami=config.server_ami, region=config.region, arm64=config.arm64, path=path
    )
    if real:
        return None
    return server_image.unrecorded_warning(region=config.region, arm64=config.arm64, path=path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.server_ami", description=__doc__)
    parser.add_argument("command", choices=("refresh", "check"))
    parser.add_argument(
        "-c", "--context", action="append", default=[], metavar="KEY=VALUE", dest="context"
    )
    parser.add_argument("--cdk-json", type=Path, default=CDK_JSON)
    args, _ = parser.parse_known_args(argv)
    try:
        config = MeshConfig.from_context(context_from(args.context, args.cdk_json))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.command == "check":
        # A warning, not a refusal: the first deploy on a new account must work without a
        # recorded image (DESIGN §2.6); the parameter only costs an unplanned roll later.
        warning = check(config)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return 0

    session = boto3.Session(region_name=config.region)
    old, new = refresh(config, ssm=session.client("ssm"), ec2=session.client("ec2"))
    key = server_image.record_key(config.region, config.arm64)
    if old is new:
        print(f"{key}: {new.image_id} ({new.name}) is still current; nothing changed")
    else:
        was = f"{old.image_id} ({old.name})" if old else "nothing recorded"
        print(f"{key}: {was} -> {new.image_id} ({new.name})")
        print(
            "Commit server-ami.json; the next deploy replaces the servers one at a time "
            "(docs/operations.md, 'Upgrade Consul without losing quorum')."
        )
    if config.server_ami:
        print(f"note: server_ami={config.server_ami} is set and overrides the record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
