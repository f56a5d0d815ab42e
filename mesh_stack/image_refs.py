"""Container image references, read without CDK: which registry an image is pulled from.

Shared by the configuration (validation) and `sidecar_images` (how ECS pulls each image).
"""

from __future__ import annotations

import re

ENVOY_REPOSITORY = "envoyproxy/envoy"
# Stock Python from ECR Public (no Docker Hub pull limits); the init program needs only stdlib.
INIT_IMAGE = "public.ecr.aws/docker/library/python:3.13-slim"
ECR_PUBLIC = "public.ecr.aws"

# Container image references (the Docker reference grammar, distribution/reference
# `reference.go`): an optional registry host (with a dot or a port, or `localhost`), then
# lowercase path components joined by `.`, `_`, `__` or dashes; a tag of up to 128 word
# characters, dots and dashes, or a sha256 digest.
_IMAGE_HOST = r"(?:(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+|localhost)(?::\d+)?/)"
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
IMAGE_REPOSITORY = re.compile(rf"^{_IMAGE_HOST}?{_IMAGE_PATH}$")
IMAGE_REFERENCE = re.compile(
    rf"^{_IMAGE_HOST}?{_IMAGE_PATH}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}|@sha256:[0-9a-f]{{64}})$"
)

_ECR_HOST = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z]{2}(-gov)?-[a-z]+-\d)\.amazonaws\.com$")


def registry_host(image: str) -> str:
    """The registry of an image reference: its first component when that names a host (a dot,
    a port or `localhost`, as Docker decides), else Docker Hub, `docker.io`."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def ecr_repository(image: str) -> tuple[str, str, str] | None:
    """(account, region, repository name) of an Amazon ECR image or repository, else None."""
    found = _ECR_HOST.match(registry_host(image))
    if found is None:
        return None
    path = image.split("/", 1)[1]
    name = re.split(r"[:@]", path, maxsplit=1)[0]
    return found.group(1), found.group(2), name
