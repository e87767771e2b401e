"""Emulated Lambda invocations in an execution environment that stays warm.

``python -m fanout.testing.lambda_runner``

Reads one request per line on stdin, ``{"root", "handler", "event", "response", "log",
"request_id", ...}``; imports the handler from the project's ``functions/`` folder as Lambda
would (by file path, once: later invocations reuse it, as a warm Lambda environment does),
calls it, writes ``{"ok": result}`` or Lambda's error shape to ``response`` and the
invocation's stdout and stderr to ``log``, then answers one line on stdout. A crash fault
makes the process exit after its N-th stored result, as a worker dying mid-chunk would; the
emulator then starts a fresh environment, as Lambda does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from typing import Any


class Context:
    """The parts of the Lambda context object fanout's handlers use."""

    def __init__(self, request_id: str, name: str, memory: str, timeout: float) -> None:
        self.aws_request_id = request_id
        self.function_name = name
        self.memory_limit_in_mb = memory
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _crash_after(puts: int) -> None:
    from fanout.backends.aws.store import AwsStore

    original = AwsStore.put_result
    count = {"n": 0}

    def put_result(self: AwsStore, record: Any) -> Any:
        stored = original(self, record)
        count["n"] += 1
        if count["n"] >= puts:
            os._exit(1)  # the emulated worker dies here, after storing `puts` results
        return stored

    AwsStore.put_result = put_result  # type: ignore[method-assign]


_handlers: dict[tuple[str, str], Any] = {}


def _handler(root: str, name: str) -> Any:
    """The handler, imported on the environment's first invocation (Lambda's init phase)."""
    key = (root, name)
    if key not in _handlers:
        module_path, _, attribute = name.rpartition(".")
        spec = importlib.util.spec_from_file_location(
            module_path.replace("/", "."), os.path.join(root, module_path + ".py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _handlers[key] = getattr(module, attribute)
    return _handlers[key]


def invoke(request: dict[str, Any]) -> None:
    """One invocation, its output going to the request's log file (fd level)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(request["log"], "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        handler = _handler(request["root"], request["handler"])
        if request.get("crash_after"):
            _crash_after(int(request["crash_after"]))
        context = Context(request["request_id"], request["function_name"],
                          request["memory"], float(request["timeout"]))
        event = request["event"]
        event = json.loads(event) if isinstance(event, str) else event
        try:
            response: dict[str, Any] = {"ok": handler(event, context)}
        except Exception as exc:
            response = {"errorType": type(exc).__name__, "errorMessage": str(exc),
                        "stackTrace": traceback.format_exception(exc)}
            traceback.print_exc()
        with open(request["response"], "w") as out:
            json.dump(response, out, default=str)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def main() -> int:
    for line in sys.stdin:
        if line.strip():
            invoke(json.loads(line))
            sys.stdout.write("done\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
