"""Lambda handler of a scheduled run's first step: make the run's items into a job."""

from fanout.backends.aws.handlers import plan_handler as handler

__all__ = ["handler"]
