"""Whether a container's `user` can mean root. Pure: no CDK (configuration checks it too).

Docker hands `user` to runc, which splits it at ':' and reads each part with Go's
strconv.Atoi, so "00", "+0" and "0000" all mean uid/gid 0 (runc libcontainer/user
GetExecUser); an empty user part means the image's own user, which may be root.
"""

from __future__ import annotations

import re

_NUMERIC_ID = re.compile(r"[+-]?[0-9]+")


def may_be_root(user: str) -> bool:
    """Whether a container `user` ("user", "uid", "user:group", "uid:gid") can mean root."""
    parts = [part.strip() for part in user.split(":")]
    if not parts[0]:
        return True
    for part in parts:
        if _NUMERIC_ID.fullmatch(part) and int(part) == 0:
            return True
        if part.lower() == "root":
            return True
    return False
