"""The Consul servers' AMI: recorded in the repository, changed only when an operator asks.

A launch template whose image is the public SSM parameter
`/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-<arch>` is resolved by
CloudFormation at every deploy (`AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>`): whenever
AWS publishes a new Amazon Linux 2023 image, the next deploy of anything (a new service, an
alarm e-mail) changes the launch template, and the rolling update replaces every server.

So the image is a literal in the template, read at synth time from `server-ami.json` (committed,
keyed `<region>/<arch>`), or from the `server_ami` setting when an operator pins one by hand.
`make refresh-ami` (`tools/server_ami.py`, needs AWS credentials) asks SSM for the current image
of the configured region and architecture and writes it into the record; committing that change
is the decision to roll the fleet. Synthesis reads only the file: no credentials, no lookup.

With nothing recorded for the region and architecture and no `server_ami` (a new checkout, a
new region), the servers launch from that same public parameter, resolved at deploy time, so a
plain `cdk deploy` of the default configuration works on a new account (DESIGN §2.6). app.py
and `make deploy` (`tools/server_ami.py check`) say so in one line: until `make refresh-ami` is
run and committed, an unrelated deploy after AWS published an image rolls the fleet.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD = Path(__file__).resolve().parent.parent / "server-ami.json"
# Amazon Linux 2023 public parameters (EC2 User Guide, "Query for the latest Amazon Linux AMI
# IDs using Systems Manager Parameter Store"): the kernel 6.1 line, the parameter CDK's
# latest_amazon_linux2023() resolved for this fleet until now, so a refresh does not also move
# the servers to another kernel line (`kernel-default` follows whichever AWS makes default).
PARAMETER_PREFIX = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-"
# EC2 image IDs: `ami-` and 8 (older) or 17 hex digits, like every EC2 resource ID.
IMAGE_ID = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")


def architecture(arm64: bool) -> str:
    """The architecture as EC2 DescribeImages names it (and the parameter suffix)."""
    return "arm64" if arm64 else "x86_64"


def parameter_name(arm64: bool) -> str:
    return PARAMETER_PREFIX + architecture(arm64)


def record_key(region: str, arm64: bool) -> str:
    return f"{region}/{architecture(arm64)}"


@dataclass(frozen=True)
class RecordedImage:
    """One entry of the record: the image and where and when it was read."""

    image_id: str
    name: str
    parameter: str
    recorded_at: str

    def as_json(self) -> dict[str, str]:
        return {
            "image_id": self.image_id,
            "name": self.name,
            "parameter": self.parameter,
            "recorded_at": self.recorded_at,
        }


def load_record(path: Path = RECORD) -> dict[str, RecordedImage]:
    """The record's images by `<region>/<arch>`; a missing file is an empty record."""
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    images = {}
    for key, entry in data.get("images", {}).items():
        image = RecordedImage(**entry)
        if not IMAGE_ID.match(image.image_id):
            raise ValueError(f"{path.name}: {key} image_id {image.image_id!r} is not an AMI ID")
        images[key] = image
    return images


def save_record(images: dict[str, RecordedImage], path: Path = RECORD) -> None:
    data = {
        "comment": (
            "Consul server AMIs by <region>/<arch>, written by `make refresh-ami`; "
            "a change here replaces the servers one at a time at the next deploy."
        ),
        "images": {key: images[key].as_json() for key in sorted(images)},
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def unrecorded_warning(*, region: str, arm64: bool, path: Path = RECORD) -> str:
    """The one line said while no image is fixed for `region`/`arm64` (app.py at synth,
    `make deploy` through tools/server_ami.py check)."""
    return (
        f"no Consul server AMI recorded for {record_key(region, arm64)} in {path.name}: the "
        f"servers launch from {parameter_name(arm64)}, resolved at every deploy, so a later "
        "unrelated deploy may roll the fleet; run `make refresh-ami` with AWS credentials "
        "(and the same ARGS) and commit the file, or set server_ami"
    )


def resolve(*, server_ami: str, region: str, arm64: bool, path: Path = RECORD) -> tuple[str, bool]:
    """The image the servers launch from and whether it is fixed (set or recorded).

    ("", False) when nothing is: the fleet then resolves `parameter_name(arm64)` at deploy time.
    """
    if server_ami:
        return server_ami, True
    image = load_record(path).get(record_key(region, arm64))
    if image is None:
        return "", False
    return image.image_id, True
