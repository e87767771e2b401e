"""DynamoDB requests checked against AWS's published API model, where moto is lenient.

moto 5.2 ignores a request parameter's value when it is not one AWS allows: an UpdateItem
with ``ReturnValuesOnConditionCheckFailure="all_old"`` succeeds there, and on a lost
condition returns no item, while DynamoDB refuses the request with a ValidationException
(the parameter's valid values are ``ALL_OLD`` and ``NONE``: API reference, UpdateItem;
AWS re:Post, "dynamodb-conditionalcheckfailedexception"). The emulation refuses what the
API model's enums do not allow, for every top-level parameter of every operation, from
botocore's copy of that model (the one the SDK is generated from).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _enums(service: str, operation: str) -> dict[str, frozenset[str]]:
    """Top-level string parameters of ``operation`` whose values the model enumerates."""
    import botocore.session

    model = botocore.session.get_session().get_service_model(service)
    if operation not in model.operation_names:
        return {}
    shape = model.operation_model(operation).input_shape
    if shape is None:
        return {}
    return {name: frozenset(member.enum) for name, member in shape.members.items()
            if getattr(member, "enum", None)}


def invalid_value(service: str, operation: str, body: dict[str, Any]) -> str | None:
    """DynamoDB's message for a parameter value outside its enum, or None if all are valid."""
    for name, allowed in _enums(service, operation).items():
        value = body.get(name)
        if isinstance(value, str) and value not in allowed:
            return (f"1 validation error detected: Value '{value}' at '{name[:1].lower()}"
                    f"{name[1:]}' failed to satisfy constraint: Member must satisfy enum "
                    f"value set: [{', '.join(sorted(allowed))}]")
    return None
