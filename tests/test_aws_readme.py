"""The README's emulated_aws example, run exactly as written (a fresh interpreter)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Testing without AWS: `fanout.testing`", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's fanout.testing section lost its example"
    return match.group(1)


def test_the_readme_emulation_example_passes_as_written(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {**os.environ, "FANOUT_HOME": str(tmp_path / "home"),
           "FANOUT_PROJECT_ROOT": str(ROOT)}
    env.pop("FANOUT_BACKEND", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
