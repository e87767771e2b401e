"""What a worker artifact was built with, written at build time and checked by the client.

cloudpickle payloads load only on the same Python minor version, a task that imports scipy
fails on a worker built without it, and a client newer than its workers may send a protocol
they do not speak. So ``sam build`` (the Makefile) and the Batch image (``Dockerfile``) both
record ``fanout_build.json`` - Python minor, fanout version, a hash of
``worker-requirements.txt`` - and the client asks the worker Lambda for it once before it
uploads anything (``AwsBackend.check_stack``).

Standard library only, runnable as a script by the build before fanout is installed:

    python3 client/backends/aws/build_info.py OUT_DIR PYTHON_MINOR REQUIREMENTS PYPROJECT
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

FILENAME = "fanout_build.json"
REQUIREMENTS = "worker-requirements.txt"


def requirements_sha256(path: str | os.PathLike[str]) -> str:
    """A hash of the requirement lines (comments, blanks and spacing do not count)."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(" ".join(line.split()))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def find_requirements() -> Path | None:
    """The client's view of the workers' requirements: $FANOUT_WORKER_REQUIREMENTS, else
    the file beside this source tree (a checkout), else in the working directory."""
    configured = os.environ.get("FANOUT_WORKER_REQUIREMENTS")
    candidates = [Path(configured)] if configured else []
    candidates += [Path(__file__).resolve().parents[3] / REQUIREMENTS, Path.cwd() / REQUIREMENTS]
    return next((c for c in candidates if c.is_file()), None)


def artifact_info(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Inside a worker: the recorded build, and the Python actually running it."""
    base = Path(root or os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd())
    info: dict[str, Any] = {}
    recorded = base / FILENAME
    if recorded.is_file():
        info = json.loads(recorded.read_text())
    elif (base / REQUIREMENTS).is_file():  # run from a source tree (the emulation)
        from fanout import __version__

        info = {"python": "{}.{}".format(*sys.version_info[:2]), "fanout": __version__,
                "requirements_sha256": requirements_sha256(base / REQUIREMENTS)}
    info["runtime_python"] = "{}.{}".format(*sys.version_info[:2])
    return info


def write(out_dir: str, python: str, requirements: str, pyproject: str) -> Path:
    version = tomllib.loads(Path(pyproject).read_text())["project"]["version"]
    info = {"python": python, "fanout": version,
            "requirements_sha256": requirements_sha256(requirements)}
    path = Path(out_dir) / FILENAME
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    print(write(*sys.argv[1:]).read_text(), end="")
