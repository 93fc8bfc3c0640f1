"""What the database tells prebuildd: the payloads of channel `prebuildd_events`.

The triggers (`sql/triggers/*.sql`, functions in `sql/functions/notify_event.sql`) send
compact JSON, one object per change:

    {"v":1,"k":"job_status","t":"<template uuid>","at":1718035200.123456}

* `v`  -- payload version; this module understands 1 only.
* `k`  -- what changed (`EventKind`).
* `t`  -- the template to reconcile; absent for global kinds (`settings_changed`).
* `at` -- `now()` of the writing transaction (its start) as epoch seconds: measures event lag,
  and makes every row of one transaction's (kind, template) identical, so PostgreSQL collapses
  them into one notification.

A notification only *wakes* work: the tables are the truth, so an event carries ids, never
state. Anything else arriving on the channel is refused with `InvalidPayload` (the listener
counts and ignores it); parsing never raises any other exception.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from uuid import UUID

CHANNEL = "prebuildd_events"
PAYLOAD_VERSION = 1
# PostgreSQL refuses longer NOTIFY payloads; ours are under 200 bytes.
MAX_PAYLOAD_BYTES = 8000


class EventKind(enum.StrEnum):
    VERSION_PROMOTED = "version_promoted"  # templates.active_version_id changed (or new template)
    TEMPLATE_CHANGED = "template_changed"  # templates.deleted / deprecated changed
    PRESET_CHANGED = "preset_changed"  # preset added/removed, or its prebuild settings changed
    SCHEDULE_CHANGED = "schedule_changed"  # a preset's prebuild schedule added/changed/removed
    JOB_STATUS = "job_status"  # a prebuild's provisioner job changed status
    BUILD_INSERTED = "build_inserted"  # the prebuilds user started a build
    CLAIMED = "claimed"  # a prebuild was handed to a user
    # A person's new workspace was built from scratch although its preset keeps a pool (no
    # prebuild was claimable): demand the pool did not meet (sql/queries/demand.sql).
    MISSED = "missed"
    AGENT_READY = "agent_ready"  # an agent of a prebuild became, or stopped being, ready
    SETTINGS_CHANGED = "settings_changed"  # site_configs 'prebuilds_settings' (pause/resume)
    # A prebuild job of a tag set left the queue while creates wait for it under the cap on
    # pending prebuild jobs: names the template first in that tag set's line.
    THROTTLE_TURN = "throttle_turn"

    @property
    def is_global(self) -> bool:
        """Concerns every template: the payload names none."""
        return self in _GLOBAL_KINDS

    @property
    def is_urgent(self) -> bool:
        """A change a person made: reconciled at once, even inside the template's cooldown.

        The other kinds (provisioner progress: builds, job status, agents) are churn that the
        cooldown may batch.
        """
        return self in _URGENT_KINDS


_GLOBAL_KINDS = frozenset({EventKind.SETTINGS_CHANGED})
_URGENT_KINDS = frozenset(
    {
        EventKind.VERSION_PROMOTED,
        EventKind.TEMPLATE_CHANGED,
        EventKind.PRESET_CHANGED,
        EventKind.SCHEDULE_CHANGED,
        EventKind.CLAIMED,
        EventKind.MISSED,
    }
)


class InvalidPayload(ValueError):
    """A notification that is not a prebuildd event this version understands."""


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    # None exactly when `kind.is_global`.
    template_id: UUID | None
    # Start of the writing transaction, epoch seconds (None if the sender omitted it); the
    # queue keeps the earliest of a template's events under the same name, for the lag.
    event_at: float | None
    version: int = PAYLOAD_VERSION


def parse_payload(text: str) -> Event:
    """The event in `text`, or InvalidPayload saying what is wrong with it."""
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload longer than {MAX_PAYLOAD_BYTES} bytes")
    fields = _decode_object(text)
    version = _version(fields)
    kind = _kind(fields)
    template_id = _template(fields, kind)
    return Event(kind=kind, template_id=template_id, event_at=_at(fields), version=version)


def format_payload(event: Event) -> str:
    """The text the triggers send for `event` (tests and tools; the service only parses)."""
    fields: dict[str, object] = {"v": event.version, "k": event.kind.value}
    if event.template_id is not None:
        fields["t"] = str(event.template_id)
    if event.event_at is not None:
        fields["at"] = event.event_at
    return json.dumps(fields, separators=(",", ":"))


def _reject_constant(name: str) -> object:
    raise InvalidPayload(f"{name} is not a JSON number")


def _decode_object(text: str) -> dict[str, object]:
    try:
        # NaN/Infinity are Python extensions of JSON; no trigger sends them.
        value: object = json.loads(text, parse_constant=_reject_constant)
    except InvalidPayload:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers malformed JSON and absurdly long integers; RecursionError deep
        # nesting ("[[[[..."), which fits easily in 8000 bytes.
        raise InvalidPayload(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise InvalidPayload(f"not a JSON object but {type(value).__name__}")
    return value


def _version(fields: dict[str, object]) -> int:
    version = fields.get("v")
    if type(version) is not int:  # bool is an int subclass: excluded on purpose
        raise InvalidPayload("missing or non-integer version 'v'")
    if version != PAYLOAD_VERSION:
        raise InvalidPayload(f"unsupported payload version {version}")
    return version


def _kind(fields: dict[str, object]) -> EventKind:
    kind = fields.get("k")
    if not isinstance(kind, str):
        raise InvalidPayload("missing or non-string kind 'k'")
    try:
        return EventKind(kind)
    except ValueError:
        raise InvalidPayload(f"unknown event kind {kind[:40]!r}") from None


def _template(fields: dict[str, object], kind: EventKind) -> UUID | None:
    raw = fields.get("t")
    if kind.is_global:
        if raw is not None:
            raise InvalidPayload(f"{kind} is global but names a template")
        return None
    if not isinstance(raw, str):
        raise InvalidPayload(f"{kind} needs a template id 't' (string)")
    try:
        return UUID(raw)
    except ValueError:
        raise InvalidPayload(f"template id {raw[:40]!r} is not a UUID") from None


def _at(fields: dict[str, object]) -> float | None:
    raw = fields.get("at")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidPayload("'at' is not a number")
    try:
        at = float(raw)
    except OverflowError:  # an integer beyond float range
        raise InvalidPayload("'at' is out of range") from None
    if not math.isfinite(at) or at < 0:
        raise InvalidPayload("'at' is not a valid epoch time")
    return at
