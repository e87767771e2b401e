"""The bridge from moto to local processes: Lambda invocations run ``functions/`` handlers
in warm local interpreters, Batch jobs run the container command as a local process, and
the injected faults (throttles, crashes, Spot reclaims, Lambda timeouts) happen here."""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import limits
from .emulation import ACCOUNT
from .faults import Faults

#: Idle execution environments kept per function (Lambda keeps them for minutes).
WARM_ENVIRONMENTS = 4
#: How long after an invocation's deadline an environment that has not ended itself
#: (lambda_runner.Deadline) is waited for before it is killed.
DEADLINE_GRACE_SECONDS = 5.0


class Bridge:
    """The patches that make moto run fanout's workers locally, with faults injected."""

    def __init__(self, root: Path, faults: Faults, env: dict[str, str],
                 events: collections.Counter[str]) -> None:
        self.root = root
        self.faults = faults
        self.env = env
        self.events = events
        self.tries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.lock = threading.Lock()
        self.running: dict[subprocess.Popen[bytes], str] = {}  # worker process -> job id
        self.closed = False
        self.in_flight = 0  # Lambda invocations running now (the concurrency quota)
        self.idle: dict[str, list[subprocess.Popen[bytes]]] = {}  # warm environments

    def _started(self, proc: subprocess.Popen[bytes], job_id: str) -> None:
        with self.lock:
            self.running[proc] = job_id
            closed = self.closed
        if closed:
            proc.kill()

    def _ended(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.running.pop(proc, None)

    def kill(self, job_id: str | None = None) -> None:
        """Kill the workers of ``job_id`` (its execution was stopped), or all of them."""
        with self.lock:
            victims = [p for p, job in self.running.items() if job_id in (None, job)]
            if job_id is None:
                self.closed = True
                victims += [p for procs in self.idle.values() for p in procs]
                self.idle.clear()
        for proc in victims:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def draw(self, kind: str, subject: str) -> float:
        """The fault draw of this try of ``subject`` (see :meth:`Faults.draw`)."""
        with self.lock:
            self.tries[(kind, subject)] += 1
            nth = self.tries[(kind, subject)]
        return self.faults.draw(kind, subject, nth)

    def chance(self, kind: str, subject: str, rate: float) -> bool:
        return rate > 0 and self.draw(kind, subject) < rate

    def invoke_lambda(self, function: Any, event: Any) -> tuple[str, bool, str]:
        """Run one invocation of ``function`` (moto's model) in one of its execution
        environments: a warm one when one is idle, as on Lambda, else a new interpreter."""
        text = event if isinstance(event, str) else json.dumps(event or {})
        timeout = float(function.timeout)
        chunk = json.loads(text).get("chunk") or {}
        task_indexes = {t[0] for t in _chunk_tasks(chunk)}
        self.events["lambda_invocations"] += 1
        if task_indexes & self.faults.lambda_timeout_tasks:
            timeout = min(timeout, self.faults.lambda_timeout_seconds)
        crash_after = None
        subject = _subject(task_indexes, function.function_name)
        if chunk and self.chance("crash", subject, self.faults.crash_rate):
            draw = self.draw("crash-after", subject)
            crash_after = 1 + int(draw * max(1, len(task_indexes)))
            self.events["lambda_crash"] += 1
        with tempfile.TemporaryDirectory() as tmp:
            response_path = os.path.join(tmp, "response.json")
            log_path = os.path.join(tmp, "log.txt")
            proc = self._environment(function)
            # The environment ends itself at this deadline (lambda_runner.Deadline).
            deadline = time.monotonic() + timeout
            request = {"root": str(self.root), "handler": function.handler, "event": text,
                       "response": response_path, "log": log_path,
                       "request_id": str(uuid.uuid4()),
                       "function_name": function.function_name,
                       "memory": str(function.memory_size), "timeout": timeout,
                       "deadline": deadline, "crash_after": crash_after}
            self._started(proc, chunk.get("job_id") or json.loads(text).get("job_id", ""))
            try:
                answered = self._call(proc, request, deadline)
            finally:
                self._ended(proc)
            log_text = ""
            if os.path.exists(log_path):
                with open(log_path, "rb") as log:
                    log_text = log.read().decode(errors="replace")
            if answered is None:
                proc.kill()
                proc.wait()
                self.events["lambda_timeout"] += 1
                return json.dumps({"errorType": "Sandbox.Timedout", "errorMessage":
                                   f"Task timed out after {timeout:.2f} seconds"}), True, log_text
            if not answered or not os.path.exists(response_path):
                code = proc.wait()
                return json.dumps({"errorType": "Runtime.ExitError", "errorMessage":
                                   f"Runtime exited with error: exit status {code}"}
                                  ), True, log_text
            self._release(function, proc, reuse=crash_after is None)
            with open(response_path) as handle:
                response = json.load(handle)
        if "ok" in response:
            return json.dumps(response["ok"]), False, log_text
        return json.dumps(response), True, log_text

    def _environment(self, function: Any) -> subprocess.Popen[bytes]:
        """A warm execution environment of ``function``, or a new one (a cold start)."""
        with self.lock:
            idle = self.idle.setdefault(function.function_name, [])
            while idle:
                proc = idle.pop()
                if proc.poll() is None:
                    return proc
        self.events["lambda_cold_starts"] += 1
        env = {**self.env, **{k: str(v) for k, v in function.environment_vars.items()}}
        return subprocess.Popen([sys.executable, "-m", "fanout.testing.lambda_runner"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=env, cwd=str(self.root))

    def _release(self, function: Any, proc: subprocess.Popen[bytes], reuse: bool) -> None:
        """Keep the environment warm for the next invocation, or let it go."""
        with self.lock:
            idle = self.idle.setdefault(function.function_name, [])
            if reuse and not self.closed and len(idle) < WARM_ENVIRONMENTS:
                idle.append(proc)
                return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @staticmethod
    def _call(proc: subprocess.Popen[bytes], request: dict[str, Any],
              deadline: float) -> bool | None:
        """Send one request; True when answered, False when the process died, None when
        the deadline passed first (the environment says so and exits; one that cannot
        is given up on a little later and killed by the caller)."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            return False
        wait = max(0.0, deadline - time.monotonic()) + DEADLINE_GRACE_SECONDS
        ready, _, _ = select.select([proc.stdout], [], [], wait)
        if not ready:
            return None
        answer = proc.stdout.readline()
        if answer == b"timeout\n":
            return None
        return answer == b"done\n"

    def throttle(self, function_name: str, body: Any) -> None:
        """Throttle this invoke at ``throttle_rate``, drawn per chunk and try."""
        subject = function_name
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
            payload = json.loads(body or b"{}")
            if isinstance(payload, dict) and isinstance(payload.get("chunk"), dict):
                tasks = {t[0] for t in _chunk_tasks(payload["chunk"])}
                subject = _subject(tasks, function_name)
        if self.chance("throttle", subject, self.faults.throttle_rate):
            self.events["lambda_throttle"] += 1
            raise TooManyRequestsError()

    @contextlib.contextmanager
    def concurrency(self) -> Iterator[None]:
        """One running invocation; above the quota Lambda throttles instead of queueing."""
        with self.lock:
            if self.in_flight >= self.faults.lambda_concurrency:
                self.events["lambda_quota_throttle"] += 1
                raise TooManyRequestsError()
            self.in_flight += 1
        try:
            yield
        finally:
            with self.lock:
                self.in_flight -= 1

    def run_batch_job(self, job: Any) -> None:
        """moto's ``batch.models.Job.run`` without Docker: the command as a local process."""
        from moto.batch.utils import JobStatus

        try:
            job.job_started_at = datetime.now()
            job.status = JobStatus.RUNNING
            container = job.job_definition.container_properties or {}
            command = job.container_overrides.get("command") or container.get("command", [])
            command = [sys.executable if part == "python" else part for part in command]
            env = dict(self.env)
            for item in container.get("environment", []) + job.container_overrides.get(
                    "environment", []):
                env[item["name"]] = item["value"]
            env["AWS_BATCH_JOB_ID"] = job.job_id
            length = limits.overrides_length(job.container_overrides or {})
            if length > limits.ECS_OVERRIDES_MAX_CHARS:
                self.events["overrides_too_long"] += 1
                job.job_stopped_reason = (
                    "Container Overrides length must be at most "
                    f"{limits.ECS_OVERRIDES_MAX_CHARS} (got {length})")
                job._mark_stopped(success=False)
                return
            strategy = job.job_definition.retry_strategy or {}
            attempts = int(strategy.get("attempts", 1))
            limit = float((job.timeout or {}).get("attemptDurationSeconds")
                          or (job.job_definition.timeout or {}).get("attemptDurationSeconds")
                          or 3600)
            for attempt in range(1, attempts + 1):
                job._start_attempt()
                env["AWS_BATCH_JOB_ATTEMPT"] = str(attempt)
                code, reason = self._batch_attempt(command, env, limit)
                if code == 0:
                    job._mark_stopped(success=True)
                    return
                job.job_stopped_reason = reason
                if _exit_action(strategy.get("evaluateOnExit", []), reason, code) != "retry":
                    break
                job.job_stopped = False
            job._mark_stopped(success=False)
        except Exception as exc:  # a bug here must fail the job, not hang the execution
            job.job_stopped_reason = f"emulator error: {exc!r}"
            job._mark_stopped(success=False)

    def _batch_attempt(self, command: list[str], env: dict[str, str],
                       limit: float) -> tuple[int, str]:
        chunk = json.loads(env.get("FANOUT_CHUNK_REF", "{}"))
        subject = _subject({t[0] for t in _chunk_tasks(chunk)}, "batch")
        interrupt = self.chance("spot", subject, self.faults.spot_interruption_rate)
        notice = 0.05 + 0.55 * self.draw("spot-notice", subject)
        self.events["batch_attempts"] += 1
        proc = subprocess.Popen(command, env=env, cwd=str(self.root), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        self._started(proc, chunk.get("job_id", ""))
        try:
            return self._wait_attempt(proc, notice if interrupt else None, limit)
        finally:
            self._ended(proc)

    def _notice_when_file(self, proc: subprocess.Popen[bytes], limit: float) -> bool:
        """Wait for the ``spot_interrupt_on`` file (or the attempt's end); claim it once."""
        path = self.faults.spot_interrupt_on
        if not path:
            return False
        deadline = time.monotonic() + limit
        while proc.poll() is None and time.monotonic() < deadline:
            with self.lock:
                if os.path.exists(path):
                    os.unlink(path)
                    return True
            time.sleep(0.02)
        return False

    def _reclaim(self, proc: subprocess.Popen[bytes]) -> tuple[int, str]:
        """Spot's two-minute warning, compressed: SIGTERM, then the Spot status reason."""
        self.events["spot_interruption"] += 1
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.read()
        return (proc.returncode or 143), "Your Spot Task was interrupted."

    def _wait_attempt(self, proc: subprocess.Popen[bytes], notice: float | None,
                      limit: float) -> tuple[int, str]:
        """Wait for a Batch attempt; ``notice``: reclaim it (Spot) after that many seconds."""
        if self._notice_when_file(proc, limit):
            return self._reclaim(proc)
        if notice is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=notice)
            return self._reclaim(proc)
        try:
            proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return 137, "Job attempt duration exceeded timeout"
        code = proc.returncode
        return code, "Essential container in task exited" if code else ""


def _subject(task_indexes: set[int], name: str) -> str:
    """What a fault draw is about: a chunk by its tasks, else the function called."""
    if not task_indexes:
        return name
    return f"{name}:{min(task_indexes)}-{max(task_indexes)}:{len(task_indexes)}"


def _chunk_tasks(chunk: dict[str, Any]) -> list[list[Any]]:
    """A map item's tasks: inline, or read from moto's S3 where its reference points."""
    if "tasks" in chunk or "key" not in chunk:
        return list(chunk.get("tasks", []))
    from moto.s3.models import s3_backends

    start, length = int(chunk["offset"]), int(chunk["length"])
    for backend in s3_backends[ACCOUNT].values():
        for candidate in backend.buckets.values():
            key = candidate.keys.get(chunk["key"])
            if key is not None:
                return list(json.loads(key.value[start:start + length])["tasks"])
    return []


def _exit_action(rules: list[dict[str, str]], reason: str, code: int) -> str:
    """AWS Batch's evaluateOnExit: the first matching rule decides; no match retries."""
    for rule in rules:
        checks = []
        if "onStatusReason" in rule:
            checks.append(fnmatch.fnmatchcase(reason, rule["onStatusReason"]))
        if "onReason" in rule:
            checks.append(fnmatch.fnmatchcase(reason, rule["onReason"]))
        if "onExitCode" in rule:
            checks.append(fnmatch.fnmatchcase(str(code), rule["onExitCode"]))
        if checks and all(checks):
            return rule["action"].lower()
    return "retry"


class TooManyRequestsError(Exception):
    """Raised in moto's Lambda backend; turned into a 429 by the patched response."""
