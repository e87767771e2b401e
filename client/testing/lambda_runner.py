"""Emulated Lambda invocations in an execution environment that stays warm.

``python -m fanout.testing.lambda_runner``

Reads one request per line on stdin, ``{"root", "handler", "event", "response", "log",
"request_id", ...}``; imports the handler from the project's ``functions/`` folder as Lambda
would (by file path, once: later invocations reuse it, as a warm Lambda environment does),
calls it, writes ``{"ok": result}`` or Lambda's error shape to ``response`` and the
invocation's stdout and stderr to ``log``, then answers one line on stdout: ``done``, or
``timeout`` when the request's ``deadline`` (a ``time.monotonic()`` value, the same clock in
every process on Linux) passed first, after which the process exits at once. The deadline
is enforced here, by a timer thread of the environment itself, because Lambda stops a
timed-out function exactly at its timeout: a kill sent by the emulator's thread can come
late when that process is busy, and a late kill lets a timed-out chunk store results no
real Lambda could have stored. A crash fault
makes the process exit after its N-th stored result, as a worker dying mid-chunk would; the
emulator then starts a fresh environment, as Lambda does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
import traceback
from typing import Any


class Context:
    """The parts of the Lambda context object fanout's handlers use."""

    def __init__(self, request_id: str, name: str, memory: str, deadline: float) -> None:
        self.aws_request_id = request_id
        self.function_name = name
        self.memory_limit_in_mb = memory
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _crash_after(stored: int) -> None:
    """Exit the environment as soon as ``stored`` results of its chunk are in the store.

    Every write of results goes through ``AwsStore.put_results`` (a page at a time from
    the flusher; ``put_result`` is a page of one), so counting there counts them all.
    """
    from fanout.backends.aws.store import AwsStore

    original = AwsStore.put_results
    count = {"n": 0}

    def put_results(self: AwsStore, records: list[Any]) -> Any:
        out = original(self, records)
        count["n"] += len(records)
        if count["n"] >= stored:
            os._exit(1)  # the emulated worker dies here, its results so far stored
        return out

    AwsStore.put_results = put_results  # type: ignore[method-assign]


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


class Deadline:
    """Ends the environment at the invocation's deadline, unless the invocation ended
    first: one of the two wins, under a lock, so ``done`` and ``timeout`` never both go out."""

    def __init__(self, deadline: float, answer_fd: int) -> None:
        self._lock = threading.Lock()
        self._over = False
        self._answer_fd = answer_fd
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self._over = True
            os.write(self._answer_fd, b"timeout\n")
            os._exit(124)

    def end(self) -> None:
        """The invocation ended in time: the timer may no longer fire (it waits on the
        lock if it is firing now, and then exits the process)."""
        with self._lock:
            self._over = True
        self._timer.cancel()


def invoke(request: dict[str, Any]) -> None:
    """One invocation, its output going to the request's log file (fd level)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    deadline = float(request.get("deadline") or time.monotonic() + float(request["timeout"]))
    watch = Deadline(deadline, saved[0])
    with open(request["log"], "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        handler = _handler(request["root"], request["handler"])
        if request.get("crash_after"):
            _crash_after(int(request["crash_after"]))
        context = Context(request["request_id"], request["function_name"],
                          request["memory"], deadline)
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
        watch.end()
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
