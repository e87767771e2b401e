"""A local worker process: ``python -m fanout.backends.local.worker --fd N --home DIR``.

It is a plain interpreter started by the supervisor (not a forked copy of the client), so
a user's script is never re-imported and a crash here cannot take the client with it. It
receives chunks on a socket, runs them with the shared :class:`~fanout.runtime.WorkerRuntime`,
and sends back each result record after it is committed to the store.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
from multiprocessing.connection import Connection

from ...capture import FdCapture
from ...context import TaskContext
from ...runtime import WorkerRuntime
from .store import LocalStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fanout-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--worker-id", required=True)
    args = parser.parse_args(argv)

    # Ctrl-C in the terminal reaches the whole process group; the client decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(args.fd)
    store = LocalStore(args.home)
    capture = FdCapture(directory=str(store.home))
    faulthandler.enable(file=sys.stderr)  # a segfault's traceback lands in the task's stderr
    worker_id = args.worker_id
    store.worker_started(worker_id, os.getpid())

    def on_start(ctx: TaskContext) -> None:
        store.worker_running(worker_id, ctx.job_id, ctx.task_index, ctx.attempt)

    runtime = WorkerRuntime(store, worker_id, capture, on_start=on_start)
    conn.send(("ready", worker_id, os.getpid(), capture.paths))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                break  # the supervisor is gone: nothing more will be asked of us
            kind = message[0]
            if kind == "chunk":
                runtime.run_chunk(message[1], on_result=lambda rec: conn.send(("result", rec)))
            elif kind == "reduce":
                _, job_id, attempt = message
                runtime.run_reduce(job_id, attempt, on_result=lambda r: conn.send(("result", r)))
            elif kind == "stop":
                break
            if not conn.poll():  # nothing queued: show this worker as idle in `status`
                store.worker_running(worker_id, None, None, None)
    finally:
        store.worker_gone([worker_id])
        capture.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
