"""The error of configuration: one line naming the key, the value given and what is allowed.

Its own module so that every parser of the context (config.py and the modules it delegates
to, such as services_config.py) raises the one type app.py catches.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line meant for the operator."""


def fail(key: str, value: object, allowed: str) -> ConfigError:
    """`invalid context value <key>=<value>: <allowed>`; key may be a path (services.web.port)."""
    return ConfigError(f"invalid context value {key}={value!r}: {allowed}")
