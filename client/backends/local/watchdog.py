"""The watchdog: a tiny thread that kills a worker whose heartbeat and CPU time stopped.

It only reads each worker's beacon and CPU time and never touches the store, so a worker
frozen while holding the store's write lock is killed even while the supervisor itself
waits for that lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .worker_process import WorkerProcess

log = logging.getLogger("fanout.local")

#: Extra seconds a starting worker has before its first heartbeat (interpreter start-up).
STARTUP_GRACE_SECONDS = 10.0


class Watchdog:
    """Watches the supervisor's workers (read through ``workers``) every quarter of
    ``stall_seconds``; ``wake`` tells the supervisor that it killed one."""

    def __init__(self, workers: Callable[[], list[WorkerProcess]], stall_seconds: float,
                 wake: Callable[[], None]) -> None:
        self._workers = workers
        self.stall_seconds = stall_seconds
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fanout-watchdog",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        """The watchdog: kill a worker holding a task whose heartbeat and CPU time stopped.

        A worker still starting gets ``STARTUP_GRACE_SECONDS`` more (it beats only once its
        interpreter is up). An idle one is left alone unless it is stopped (SIGSTOP): a
        stopped idle worker would hold the next task it is given for a whole stall interval,
        and keep a slot that a fresh worker can fill now. A worker whose CPU time still grows
        is working (in C, holding the GIL) and is spared.
        When the watchdog itself wakes far later than it asked, this whole process group may
        have been stopped (Ctrl-Z, then ``fg``), or the machine is too busy to run it on
        time: either way every heartbeat is older by the time it overslept, for that reason
        alone, so that time is not counted as anyone's silence (nor as a lack of CPU
        progress). Only the overslept time is forgiven, not the silence before it: on a
        machine so loaded that the watchdog oversleeps every few rounds, a stopped worker is
        still killed, a little later, rather than never.
        """
        interval = self.stall_seconds / 4
        last = time.monotonic()
        while not self._stop.wait(interval):
            clock = time.monotonic()
            overslept = clock - last - interval
            last = clock
            if overslept > self.stall_seconds / 2:
                for worker in list(self._workers()):
                    silent = min(worker.heartbeat_age(clock), clock - worker.beacon_grace)
                    worker.beacon_grace = clock - max(0.0, silent - overslept)
                    worker.progress_at = min(clock, worker.progress_at + overslept)
                continue
            for worker in list(self._workers()):
                idle = worker.ready and not worker.inflight
                if worker.stalled or (idle and not worker.stopped()):
                    continue
                limit = self.stall_seconds + (0 if worker.ready else STARTUP_GRACE_SECONDS)
                working = worker.working(clock, limit)  # sampled every round: a fresh baseline
                silent = min(worker.heartbeat_age(clock), clock - worker.beacon_grace)
                if silent > limit and not working:
                    log.warning("fanout worker %s sent no heartbeat for %.1fs and used no "
                                "CPU; killing it", worker.worker_id,
                                worker.heartbeat_age(clock))
                    worker.stalled = True
                    worker.kill()
                    self._wake()
