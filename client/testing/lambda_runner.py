"""One emulated Lambda invocation in a fresh interpreter.

``python -m fanout.testing.lambda_runner``

Reads ``{"root", "handler", "event", "response", "request_id", ...}`` as JSON on stdin,
imports the handler from the project's ``functions/`` folder as Lambda would (by file
path), calls it, and writes ``{"ok": result}`` or Lambda's error shape to ``response``.
Its stdout and stderr are the invocation's log. A crash fault makes the process exit after
its N-th stored result, as a worker dying mid-chunk would.
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


def main() -> int:
    request = json.load(sys.stdin)
    root = request["root"]
    module_path, _, attribute = request["handler"].rpartition(".")
    spec = importlib.util.spec_from_file_location(
        module_path.replace("/", "."), os.path.join(root, module_path + ".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = getattr(module, attribute)
    if request.get("crash_after"):
        _crash_after(int(request["crash_after"]))
    context = Context(request["request_id"], request["function_name"], request["memory"],
                      float(request["timeout"]))
    event = json.loads(request["event"]) if isinstance(request["event"], str) else request["event"]
    try:
        response: dict[str, Any] = {"ok": handler(event, context)}
    except Exception as exc:
        response = {"errorType": type(exc).__name__, "errorMessage": str(exc),
                    "stackTrace": traceback.format_exception(exc)}
        traceback.print_exc()
    with open(request["response"], "w") as out:
        json.dump(response, out, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
