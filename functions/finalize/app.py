"""Lambda handler of the final states: record failed chunks, reduce, write the job summary."""

from fanout.backends.aws.handlers import finalize_handler as handler

__all__ = ["handler"]
