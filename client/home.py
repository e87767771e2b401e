"""Where fanout keeps what outlives a process on this machine: ``FANOUT_HOME``.

The local store and the aws backend's saved configuration (``aws.json``) both live there,
so the one rule that finds it sits here, where both backends can import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """``$FANOUT_HOME``, else ``~/.fanout``."""
    return Path(os.environ.get("FANOUT_HOME") or Path.home() / ".fanout").expanduser()
