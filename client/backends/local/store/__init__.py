"""The embedded, durable store of the local backend: SQLite for records, files for bytes.

Layout under ``FANOUT_HOME`` (default ``~/.fanout``)::

    store.sqlite                 jobs, result records, checkpoints, live workers
    jobs/<job_id>/function.pkl   the job's pickled function (and reducer.pkl)
    jobs/<job_id>/payload-N.bin  task arguments, addressed by byte range
    jobs/<job_id>/values/…       results too large for a record

One room per concern: ``database`` (connection, schema, transactions), ``jobs``, ``files``,
``results``, ``checkpoints``, ``schedules``, ``workers``. :class:`LocalStore` joins them
into the one object every process opens.
"""

from __future__ import annotations

from ....job_record import JobRecord, Owner
from ....protocol import REDUCE_INDEX
from .checkpoints import CheckpointTable
from .files import JobFiles
from .jobs import JobTable
from .results import ResultTable
from .schedules import ScheduleTable
from .workers import WorkerTable


class LocalStore(JobTable, JobFiles, ResultTable, CheckpointTable, ScheduleTable, WorkerTable):
    """One store directory. Safe to share between threads; each thread gets a connection."""

    max_record_value_bytes = 1024 * 1024


__all__ = ["REDUCE_INDEX", "JobRecord", "LocalStore", "Owner"]
