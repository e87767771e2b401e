"""Scheduled runs: when they fire, and what each run is made of.

Expressions use EventBridge Scheduler's forms, so a schedule means the same thing locally
and on AWS:

- ``rate(N unit)`` with unit ``minute``/``hour``/``day`` (singular for 1, plural otherwise);
- ``cron(minutes hours day-of-month month day-of-week year)``, one of the two day fields
  ``?``, days of the week ``1-7`` (1 = Sunday) or ``SUN``-``SAT``.

Times are in the schedule's IANA time zone (``Europe/Zurich``), so "02:00 every night" stays
02:00 across daylight-saving changes. Every run is an ordinary job with its own id.
Overlap policy: a run that comes due while the previous run of the same schedule is still
running is skipped (and recorded as skipped), never queued behind it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidArgument, InvalidArgumentType
from .options import TaskOptions

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FORMS = ("rate(5 minutes), rate(1 hour), rate(2 days), or cron(0 2 * * ? *) "
         "(minutes hours day-of-month month day-of-week year)")
_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((.+)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_DOW_NAMES = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
OVERLAP_POLICIES = ("skip",)


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidArgument(f"schedule name {name!r} is invalid: 1-64 letters, digits, '.', '_' "
                              "or '-', starting with a letter or digit")
    return name


def validate_timezone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidArgument(f"unknown timezone {timezone!r}: use an IANA name such as 'UTC', "
                              "'Europe/Zurich' or 'America/New_York'") from None


def expression(cron: str | None = None, rate: str | None = None) -> str:
    """The schedule expression from exactly one of ``cron=``/``rate=``, validated."""
    if (cron is None) == (rate is None):
        raise InvalidArgument(f"give exactly one of cron= or rate=; accepted forms: {FORMS}")
    text = (cron if cron is not None else rate or "").strip()
    if rate is not None and not text.startswith("rate("):
        text = f"rate({text})"
    if cron is not None and not text.startswith("cron("):
        text = f"cron({text})"
    parse(text)
    return text


def parse(text: str) -> tuple[str, Any]:
    """``("rate", seconds)`` or ``("cron", five-field croniter expression)``."""
    match = _RATE.match(text)
    if match:
        value, unit = int(match.group(1)), match.group(2)
        singular = unit.rstrip("s")
        if value < 1 or (value == 1) != (unit == singular):
            raise InvalidArgument(f"malformed rate expression {text!r}: use 'rate(1 {singular})' "
                                  f"or 'rate(N {singular}s)' with N > 1; accepted forms: {FORMS}")
        return "rate", value * _UNIT_SECONDS[singular]
    match = _CRON.match(text)
    if not match:
        raise InvalidArgument(f"malformed schedule expression {text!r}; accepted forms: {FORMS}")
    fields = match.group(1).split()
    if len(fields) != 6:
        raise InvalidArgument(f"malformed cron expression {text!r}: it needs 6 fields, got "
                              f"{len(fields)}; accepted forms: {FORMS}")
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise InvalidArgument(f"malformed cron expression {text!r}: exactly one of day-of-month "
                              f"and day-of-week must be '?'; accepted forms: {FORMS}")
    if year not in ("*", "?") and not re.fullmatch(r"\d{4}(-\d{4})?(,\d{4})*", year):
        raise InvalidArgument(f"malformed cron expression {text!r}: bad year field {year!r}")
    five = " ".join([minute, hour, "*" if dom == "?" else dom, month,
                     "*" if dow == "?" else _to_cron_dow(dow, text)])
    from croniter import croniter

    if not croniter.is_valid(five):
        raise InvalidArgument(f"malformed cron expression {text!r}; accepted forms: {FORMS}")
    return "cron", (five, year)


def _to_cron_dow(field: str, text: str) -> str:
    """EventBridge counts days of the week 1-7 from Sunday; cron counts 0-6."""
    def convert(token: str) -> str:
        if token.upper() in _DOW_NAMES:
            return str(_DOW_NAMES[token.upper()] - 1)
        if token.isdigit() and 1 <= int(token) <= 7:
            return str(int(token) - 1)
        if token == "*":
            return token
        raise InvalidArgument(f"malformed cron expression {text!r}: bad day of week {token!r} "
                              "(1-7 or SUN-SAT)")
    parts = []
    for item in field.split(","):
        step = ""
        if "/" in item:
            item, step = item.split("/", 1)
            step = "/" + step
        parts.append("-".join(convert(t) for t in item.split("-")) + step)
    return ",".join(parts)


def next_fire(text: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first fire time strictly after ``after`` (aware), as an aware UTC datetime."""
    zone = validate_timezone(timezone)
    kind, value = parse(text)
    if kind == "rate":
        return after.astimezone(dt.UTC) + dt.timedelta(seconds=value)
    from croniter import croniter

    five, year = value
    local = croniter(five, after.astimezone(zone))
    for _ in range(10_000):
        candidate: dt.datetime = local.get_next(dt.datetime)
        if year in ("*", "?") or _year_ok(candidate.year, year):
            return candidate.astimezone(dt.UTC)
    raise InvalidArgument(f"cron expression {text!r} never fires again")


def _year_ok(value: int, field: str) -> bool:
    for part in field.split(","):
        low, _, high = part.partition("-")
        if int(low) <= value <= int(high or low):
            return True
    return False


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as stored: everything but the pickled function, reducer and items."""

    name: str
    function: str
    expression: str
    timezone: str
    enabled: bool
    items: str  # "list" | "function" | "s3"
    items_detail: str
    options: TaskOptions
    reducer: str | None = None
    overlap: str = "skip"
    created: float = 0.0
    next_fire: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = self.options.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleSpec:
        data = dict(data)
        data["options"] = TaskOptions.from_json(data["options"])
        return cls(**data)


def show_time(stamp: float, timezone: str) -> str:
    """``stamp`` as a person reads it in the schedule's own zone, with the zone named.

    "2026-11-24 02:00 CET (Europe/Zurich)": the abbreviation says which offset applies on
    that day (CET or CEST), the IANA name which rules; UTC is just "UTC".
    """
    when = dt.datetime.fromtimestamp(stamp, validate_timezone(timezone))
    text = when.strftime("%Y-%m-%d %H:%M")
    if when.second:
        text = when.strftime("%Y-%m-%d %H:%M:%S")
    abbreviation = when.tzname() or ""
    if timezone in ("UTC", "Etc/UTC"):
        return f"{text} UTC"
    if abbreviation and abbreviation[0] not in "+-" and abbreviation != timezone:
        return f"{text} {abbreviation} ({timezone})"
    return f"{text} UTC{when.strftime('%z')[:3]}:{when.strftime('%z')[3:]} ({timezone})"


def describe_items(items: Any) -> tuple[str, str]:
    """How a schedule gets its items: a list, a function called at run time, or S3 keys."""
    if isinstance(items, str):
        if not items.startswith("s3://") or len(items) <= len("s3://"):
            raise InvalidArgument(f"items as a string must be an S3 prefix like "
                                  f"'s3://bucket/prefix/', not {items!r}")
        return "s3", items
    if callable(items):
        return "function", getattr(items, "__qualname__", repr(items))
    try:
        count = len(items)
    except TypeError:
        raise InvalidArgumentType(
            "items must be a list (or other sized collection), a function that returns the "
            "items at run time, or an 's3://bucket/prefix/' string") from None
    return "list", f"{count} items"


def run_items(spec: ScheduleSpec, items_blob: bytes | None) -> list[Any]:
    """The items of one run: the stored list, the stored function's answer now, or S3 keys."""
    from . import serialization

    if spec.items == "s3":
        return s3_items(spec.items_detail)
    loaded = serialization.loads(items_blob or b"")
    return list(loaded() if spec.items == "function" else loaded)


def run_seed(spec: ScheduleSpec, fired_at: float) -> int:
    """A run's job seed: reproducible per (schedule seed, name, fire time) when seeded."""
    from .seeding import derive_seed, fresh_seed

    if spec.options.seed is None:
        return fresh_seed()
    return derive_seed(spec.options.seed, "schedule", spec.name, int(fired_at))


def s3_items(prefix: str) -> list[str]:
    """One task per object under ``s3://bucket/prefix``: the object's full ``s3://`` URI.

    The objects are the ones a map over the same URI reads (``s3_inputs.list_objects``:
    folder markers skipped); a run that finds none has no items.
    """
    from .s3_inputs import list_objects

    try:
        objects = list_objects(prefix)
    except FileNotFoundError:
        return []
    return [f"s3://{bucket}/{key}" for bucket, key, _size, _etag in objects]


@dataclass
class ScheduleRequest:
    """A schedule to create, serialized at the call (as a job is)."""

    spec: ScheduleSpec
    function: bytes
    items: bytes | None  # pickled list or function; None for an S3 prefix
    reducer: bytes | None = None


def request_json(spec: ScheduleSpec) -> str:
    import json

    return json.dumps(spec.to_json(), sort_keys=True)
