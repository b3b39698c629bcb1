"""File modes: what a new file or folder gets, for the ones kcompile makes through mkstemp and
mkdtemp (0600 and 0700 otherwise)."""
from __future__ import annotations

import os


def current_umask() -> int:
    """The process's umask, read from /proc on Linux: setting it to read it back (the only other
    way) would change it for a moment for every thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
