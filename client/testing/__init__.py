"""``fanout.testing``: run fanout's AWS path offline, for fanout's tests and yours.

    from fanout.testing import emulated_aws

    with emulated_aws(throttle_rate=0.1) as aws:
        with fanout.Executor(backend="aws", **aws.backend_options) as ex:
            assert list(ex.map(simulate, range(100))) == expected

Needs the ``testing`` extra (moto, cfn-lint) and this project's ``template.yaml``,
``statemachine/`` and ``functions/`` (found next to the package, or via
``FANOUT_PROJECT_ROOT``).
"""

from .emulator import EmulatedAws, Faults, emulated_aws

__all__ = ["EmulatedAws", "Faults", "emulated_aws"]
