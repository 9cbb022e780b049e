"""Names of job attempts' scratch folders: they say which process owns them, so the recovery
loop can remove the folders of a process that died (killed at its hard time limit, or by the
system) without waiting until no task could still be running."""

import os
import socket

_MARK = "@"


def owner_suffix() -> str:
    """The end of a scratch folder's name owned by this process: @<pid>@<host>."""
    return f"{_MARK}{os.getpid()}{_MARK}{socket.gethostname()}"


def owner(name: str) -> tuple[int, str] | None:
    """(pid, host) of the process that owns a scratch folder of this name, if it says."""
    parts = name.rsplit(_MARK, 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2]


def this_host() -> str:
    return socket.gethostname()
