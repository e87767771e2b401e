"""Lambda handler of the worker: runs one chunk of a job with fanout's shared runtime."""

from fanout.backends.aws.handlers import worker_handler as handler

__all__ = ["handler"]
