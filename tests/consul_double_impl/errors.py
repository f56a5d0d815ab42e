"""The failures Consul answers with, and where they come from in its code."""

from __future__ import annotations

ANONYMOUS_HINT = "The anonymous token is used implicitly when a request does not specify a token."


class HTTPError(Exception):
    """A non-200 answer decided before or instead of a state change (no raft index used)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class RaftError(Exception):
    """A write failed while being applied: rolled back, but its raft index is consumed (500)."""


class DecodeError(Exception):
    """A JSON body does not fit the Go struct Consul decodes it into."""


def denied(permission: str, resource: str) -> HTTPError:
    return HTTPError(403, denied_text(permission, resource))


def denied_text(permission: str, resource: str) -> str:
    target = f' on "{resource}"' if resource else ""
    return (
        f"Permission denied: anonymous token lacks permission '{permission}'{target}. "
        f"{ANONYMOUS_HINT}"
    )


def multierror(errors: list[str]) -> str:
    """hashicorp/go-multierror's default text, which Consul returns verbatim."""
    noun = "error" if len(errors) == 1 else "errors"
    points = "".join(f"\t* {e}\n" for e in errors)
    return f"{len(errors)} {noun} occurred:\n{points}\n"
