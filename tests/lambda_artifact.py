"""Import a built Lambda artifact's handler the way Lambda does, with nothing else on the path.

``python3.X -I -S tests/lambda_artifact.py ARTIFACT_DIR HANDLER [MODULE...]`` (run by
``make sam-build`` for each function): -I and -S leave only the standard library, so a
dependency the build forgot, or a wheel built for another Python or platform, fails here
as it would in Lambda. Extra MODULEs (numpy for the workers) must import from the artifact.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def main(artifact: str, handler: str, *modules: str) -> int:
    root = Path(artifact).resolve()
    sys.path.insert(0, str(root))
    module_name, _, attribute = handler.rpartition(".")
    module = importlib.import_module(module_name.replace("/", "."))
    if not callable(getattr(module, attribute)):
        raise SystemExit(f"{handler} is not callable in {root}")
    for name in modules:
        imported = importlib.import_module(name)
        origin = Path(str(imported.__file__)).resolve()
        if root not in origin.parents:
            raise SystemExit(f"{name} imported from {origin}, not from {root}")
    foreign = sorted({str(m.__file__) for m in list(sys.modules.values())
                      if getattr(m, "__file__", None) and "site-packages" in str(m.__file__)
                      and root not in Path(str(m.__file__)).resolve().parents})
    if foreign:
        raise SystemExit(f"modules from outside the artifact: {foreign[:5]}")
    build = json.loads((root / "fanout_build.json").read_text())
    running = "{}.{}".format(*sys.version_info[:2])
    if build["python"] != running:
        raise SystemExit(f"{root} was built for Python {build['python']}, checked with {running}")
    print(f"{root.name}: {handler} imports on Python {running}"
          + (f" with {', '.join(modules)}" if modules else "") + f"; build {build}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    sys.exit(main(*sys.argv[1:]))
