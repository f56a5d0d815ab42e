"""Container image references: well-formed, pinned, and whether they live in Amazon ECR. Pure.

The grammar is the registry's own (distribution/reference `reference.go` and `regexp.go`):

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain "/"] path-component ["/" path-component]*
    domain    := host [":" port]     (a DNS name, an IPv4 address or a bracketed IPv6 address)

A name without a domain is on Docker Hub. ECS passes the string to Docker unchanged and takes
at most 255 characters (ECS developer guide, task definition parameters, `image`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
# distribution/reference `tag = [\w][\w.-]{0,127}` in Go RE2, where \w is ASCII only
# (Python's \w also matches Unicode letters, which no registry accepts).
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_NAME = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)$"
)
MAX_LENGTH = 255

# The sidecars' default images. Envoy from Docker Hub (tag `v<envoy_version>`); stock Python
# from ECR Public (no Docker Hub pull limits): the init program needs only stdlib.
ENVOY_REPOSITORY = "envoyproxy/envoy"
INIT_IMAGE = "public.ecr.aws/docker/library/python:3.13-slim"
DOCKER_HUB = "docker.io"
# Amazon ECR Public allows anonymous pulls (Amazon ECR Public user guide).
ECR_PUBLIC = "public.ecr.aws"

# Amazon ECR private registries: <account>.dkr.ecr.<region>.amazonaws.com (.com.cn in China)
# (Amazon ECR user guide, "Private registry concepts").
_ECR_DOMAIN = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?P<cn>\.cn)?$"
)


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference; `domain` is "" for Docker Hub."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def version(self) -> str:
        """What pins the image: its digest when it has one (Docker then ignores the tag)."""
        return self.digest or self.tag or ""


@dataclass(frozen=True)
class EcrRepository:
    """An image in an Amazon ECR private repository: the execution role must be granted pull."""

    account: str
    region: str
    partition: str
    name: str

    @property
    def arn(self) -> str:
        return f"arn:{self.partition}:ecr:{self.region}:{self.account}:repository/{self.name}"


def parse(reference: str) -> ImageRef:
    """The reference, or ValueError saying what is wrong with it."""
    if len(reference) > MAX_LENGTH:
        raise ValueError(f"is longer than the {MAX_LENGTH} characters ECS accepts")
    match = _REFERENCE.match(reference)
    if match is None:
        if _REFERENCE.match(reference.lower()):
            raise ValueError("repository names must be lowercase")
        raise ValueError(
            "is not an image reference like registry.example/team/app:1.4.2 or app@sha256:<hex>"
        )
    name = _NAME.match(match["name"])
    if name is None:  # the full pattern already matched the same name
        raise ValueError("is not an image reference")
    domain = name["domain"] or ""
    if domain and "." not in domain and ":" not in domain and domain != "localhost":
        # Without a dot or a port the first component is part of a Docker Hub path.
        domain, path = "", match["name"]
    else:
        path = name["path"]
    if not match["tag"] and not match["digest"]:
        raise ValueError(
            "names no tag or digest: an untagged image is whatever `latest` is when each task "
            "starts; pin a tag (app:1.4.2) or a digest (app@sha256:...)"
        )
    return ImageRef(domain=domain, path=path, tag=match["tag"], digest=match["digest"])


def ecr_repository(image: ImageRef) -> EcrRepository | None:
    """The ECR repository `image` is pulled from, or None for any other registry."""
    match = _ECR_DOMAIN.match(image.domain)
    if match is None:
        return None
    region = match["region"]
    partition = "aws-cn" if match["cn"] else "aws-us-gov" if region.startswith("us-gov-") else "aws"
    return EcrRepository(
        account=match["account"], region=region, partition=partition, name=image.path
    )


def is_repository(name: str) -> bool:
    """A repository without tag or digest (`envoy_image`: the tag is `v<envoy_version>`)."""
    try:
        parse(f"{name}:latest")
    except ValueError:
        return False
    return True


def is_pinned_reference(reference: str) -> bool:
    """A well-formed reference with a tag or digest."""
    try:
        parse(reference)
    except ValueError:
        return False
    return True


# Names of Docker Hub's registry: `index.docker.io` is the legacy name Docker normalizes to
# `docker.io` (distribution/reference `legacyDefaultDomain`); `registry-1.docker.io` is the host
# that serves its API.
_DOCKER_HUB_NAMES = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})


def registry_host(image: str) -> str:
    """The registry of a well-formed reference or repository, `docker.io` for Docker Hub; host
    names compare case-insensitively (DNS)."""
    pinned = is_pinned_reference(image)
    host = (parse(image if pinned else f"{image}:latest").domain or DOCKER_HUB).lower()
    return DOCKER_HUB if host in _DOCKER_HUB_NAMES else host


def pulled_with_credentials(image: ImageRef) -> bool:
    """Whether ECS would pull this image with `repositoryCredentials` when they are set: not
    from ECR Public (anonymous) nor Amazon ECR (the execution role; ECS developer guide,
    "Private registry authentication for tasks")."""
    return image.domain != ECR_PUBLIC and ecr_repository(image) is None
