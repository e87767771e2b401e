"""``python -m fanout.backends.aws.batch_entry``: the AWS Batch container's command."""

import sys

from .handlers import batch_main

if __name__ == "__main__":
    sys.exit(batch_main())
