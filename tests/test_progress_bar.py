"""The progress bar as a user sees it: in a real terminal (a pty), driven by a real process."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import fanout

    def double(x):
        return 2 * x

    with fanout.Executor(max_workers=2) as ex:
        for round in range(4):
            results = list(ex.map(double, range(40)))
            print(f"after map {round}: {sum(results)}")
""")


def _run_in_terminal(script: Path, home: Path, rows: int, columns: int) -> str:
    """Run ``script`` with stdin/stdout/stderr on a fresh pty of the given size; its output."""
    ours, theirs = pty.openpty()
    if rows or columns:
        fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["FANOUT_HOME"] = str(home)
    child = subprocess.Popen([sys.executable, str(script)], stdin=theirs, stdout=theirs,
                             stderr=theirs, env=env, close_fds=True, start_new_session=True)
    os.close(theirs)
    out = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([ours], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(ours, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        else:
            raise AssertionError(f"the child did not finish in 120 s; output so far: {out!r}")
        assert child.wait(timeout=60) == 0, out
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        os.close(ours)
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize(("rows", "columns"), [(0, 0), (24, 80)], ids=["0x0", "24x80"])
def test_the_bar_is_drawn_and_a_print_after_map_gets_its_own_line(
        tmp_path: Path, rows: int, columns: int) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    text = _run_in_terminal(script, tmp_path / "home", rows, columns)
    # The bar is visible, even where the terminal reports no size, and reaches the end.
    assert text.count("40/40") >= 4, text
    assert re.search(r"double: 100%\|.+\| 40/40", text), text
    # Each print starts a fresh line: nothing of the bar's before it on its line, and no
    # bar drawn after the print (the bar is finished by the time map returns).
    for round in range(4):
        line = f"after map {round}: 1560"
        at = text.index(line)
        assert text[:at].endswith("\n"), f"print landed on the bar's line: {text[at - 80:at]!r}"
        assert text[at + len(line):].startswith("\r\n"), text[at:]
    tail = text[text.index("after map 3"):]
    assert "double" not in tail, f"a bar was drawn after the last print: {tail!r}"
