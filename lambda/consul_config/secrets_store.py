"""Secrets Manager access of the provider: read two secrets, write token SecretIDs.

The provider reads only the management token and the CA certificate, and writes only the
secrets of the tokens it creates; it never reads those back (its IAM policy does not allow it).
A write uses a ClientRequestToken derived from the token's AccessorID and CreateIndex (which
together identify one SecretID, as a SecretID never changes during a token's life): repeating
it stores no new version, and nothing derived from the SecretID shows in version metadata.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import boto3


class SecretsClient(Protocol):
    """The two Secrets Manager calls the provider makes (boto3's client satisfies it)."""

    def get_secret_value(self, **kwargs: Any) -> dict[str, Any]: ...

    def put_secret_value(self, **kwargs: Any) -> dict[str, Any]: ...


_client: SecretsClient | None = None


def client() -> SecretsClient:
    """Module-level client, created on first use (no work at import for a cold start)."""
    global _client  # noqa: PLW0603 - one client per Lambda container
    if _client is None:
        _client = boto3.client("secretsmanager")
    return _client


def read_string(secrets: SecretsClient, arn: str, *, what: str) -> str:
    """The secret's current string, stripped; `what` names it in errors (never the value)."""
    response = secrets.get_secret_value(SecretId=arn)
    value = response.get("SecretString")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"the {what} secret {arn} holds no string value")
    return value.strip()


def write_token(
    secrets: SecretsClient, arn: str, *, accessor_id: str, create_index: int | None, secret_id: str
) -> None:
    """Store the token's SecretID as the secret's current value (idempotent per token)."""
    if create_index is None:
        request_token = str(uuid.uuid4())  # no identity to key on: a new version, harmless
    else:
        request_token = str(uuid.uuid5(uuid.UUID(accessor_id), f"create-index/{create_index}"))
    secrets.put_secret_value(SecretId=arn, SecretString=secret_id, ClientRequestToken=request_token)
