"""A configured service's environment and secrets: plain values stay plain, secrets come
from Secrets Manager. Pure: no CDK.

Part of the `services` configuration (services_config.py). A value that looks like a secret is
refused, with a pointer to `secrets`, and never echoed back in the error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mesh_stack.arns import KMS_KEY_ARN, SECRET_ARN
from mesh_stack.config_errors import fail
from mesh_stack.json_values import json_object

# What MeshService itself tells the app (mesh_service.LISTEN_ENV): the config may not set it.
RESERVED_ENV = ("CONSUL_MESH_LISTEN_ADDR", "CONSUL_MESH_LISTEN_HOST", "CONSUL_MESH_LISTEN_PORT")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# A complete Secrets Manager secret ARN: the name ends in "-" and the six random characters
# Secrets Manager appends, so an IAM grant on it names exactly this secret (a partial ARN would
# need a `-??????` wildcard). Names: letters, digits and /_+=.@- (Secrets Manager API
# reference, CreateSecret `Name`).
# Environment values that are secrets whatever their name: AWS access keys, PEM blocks, JWTs,
# GitHub and Slack tokens, and URLs carrying a password.
_SECRET_VALUES = (
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key ID"),
    (re.compile(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----"), "a PEM block"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."), "a JSON web token"),
    (re.compile(r"\b(ghp|gho|ghs|ghu|github_pat)_[A-Za-z0-9_]{20,}"), "a GitHub token"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    # an empty user too: redis://:password@host (RFC 3986 userinfo = user [":" password])
    (re.compile(r"://[^/\s:@]*:[^/\s@]+@"), "a URL with a password"),
)
# Environment names whose value is a secret: the last word (or two) of the name.
_SECRET_NAME_ENDINGS = (
    ("PASSWORD",),
    ("PASSWD",),
    ("PASSPHRASE",),
    ("SECRET",),
    ("TOKEN",),
    ("APIKEY",),
    ("API", "KEY"),
    ("PRIVATE", "KEY"),
    ("SECRET", "KEY"),
    ("ACCESS", "KEY"),
    ("CREDENTIALS",),
)
REDACTED = "<redacted>"


@dataclass(frozen=True)
class SecretRef:
    """One entry of `secrets`: an environment variable the ECS agent fills from Secrets Manager.

    ECS receives `<secret_arn>[:json_key:version_stage:version_id]` (ECS developer guide,
    "Using Secrets Manager": the three optional parts keep their colons when empty).
    """

    env: str
    secret_arn: str
    json_key: str | None = None
    version_stage: str | None = None
    version_id: str | None = None
    kms_key_arn: str | None = None


def looks_secret(name: str, value: str) -> str | None:
    """Why an environment variable looks like a secret, or None."""
    words = tuple(w for w in re.split(r"[^A-Za-z0-9]+", name.upper()) if w)
    for ending in _SECRET_NAME_ENDINGS:
        if words[-len(ending) :] == ending:
            return f"its name ends in {'_'.join(ending)}"
    for pattern, what in _SECRET_VALUES:
        if pattern.search(value):
            return f"its value looks like {what}"
    return None


def parse_environment(key: str, value: object) -> dict[str, str]:
    environment: dict[str, str] = {}
    for name, raw in json_object(key, value).items():
        where = f"{key}.{name}"
        if not _ENV_NAME.match(name):
            raise fail(where, REDACTED, "environment names are letters, digits and '_'")
        if name in RESERVED_ENV:
            raise fail(where, raw, "is set by MeshService itself (where the app must listen)")
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise fail(where, REDACTED, "must be a string or an integer (plain values only)")
        text = str(raw)
        reason = looks_secret(name, text)
        if reason:
            raise fail(
                where,
                REDACTED,
                f"looks like a secret ({reason}); store it in Secrets Manager and reference it "
                "under `secrets` instead",
            )
        environment[name] = text
    return environment


def _secret_ref(key: str, env: str, value: object) -> SecretRef:
    where = f"{key}.{env}"
    kms_key_arn: str | None = None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"arn", "kms_key_arn"})
        if unknown:
            raise fail(where, unknown, "a secret object takes only `arn` and `kms_key_arn`")
        if "kms_key_arn" in value:
            kms_key_arn = value["kms_key_arn"]
            if not isinstance(kms_key_arn, str) or not KMS_KEY_ARN.match(kms_key_arn):
                raise fail(
                    f"{where}.kms_key_arn",
                    kms_key_arn,
                    "must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>)",
                )
        value = value.get("arn")
    allowed = (
        "must be a complete Secrets Manager secret ARN (the name ends in '-' and six "
        "characters), optionally followed by :json-key:version-stage:version-id"
    )
    if not isinstance(value, str):
        raise fail(where, value, allowed)
    parts = value.split(":")
    if len(parts) not in (7, 10):
        raise fail(where, value, allowed)
    arn = ":".join(parts[:7])
    if not SECRET_ARN.match(arn):
        raise fail(where, value, allowed)
    json_key, stage, version = [*parts[7:], "", "", ""][:3]
    if stage and version:
        raise fail(where, value, "name a version stage or a version ID, not both")
    return SecretRef(
        env=env,
        secret_arn=arn,
        json_key=json_key or None,
        version_stage=stage or None,
        version_id=version or None,
        kms_key_arn=kms_key_arn,
    )


def parse_secrets(key: str, value: object) -> tuple[SecretRef, ...]:
    refs = []
    for env, raw in json_object(key, value).items():
        if not _ENV_NAME.match(env):
            raise fail(f"{key}.{env}", env, "environment names are letters, digits and '_'")
        if env in RESERVED_ENV:
            raise fail(f"{key}.{env}", env, "is set by MeshService itself")
        refs.append(_secret_ref(key, env, raw))
    return tuple(refs)
