"""Payload parsing: every trigger payload is understood, everything else is InvalidPayload."""

from __future__ import annotations

import json
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prebuildd.events import (
    MAX_PAYLOAD_BYTES,
    Event,
    EventKind,
    InvalidPayload,
    format_payload,
    parse_payload,
)

TEMPLATE = UUID("6a1b0e4c-57b1-4c8e-9a55-3e0f5c1b7d21")
TEMPLATE_KINDS = [kind for kind in EventKind if not kind.is_global]


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_every_template_kind_as_the_triggers_send_it(kind: EventKind) -> None:
    text = f'{{"v":1,"k":"{kind}","t":"{TEMPLATE}","at":1718035200.123456}}'
    assert parse_payload(text) == Event(kind, TEMPLATE, 1718035200.123456, 1)


def test_global_kind_has_no_template() -> None:
    event = parse_payload('{"v":1,"k":"settings_changed","at":1718035200.000000}')
    assert event == Event(EventKind.SETTINGS_CHANGED, None, 1718035200.0, 1)
    assert event.kind.is_global


def test_at_is_optional_and_integers_are_accepted() -> None:
    assert parse_payload(f'{{"v":1,"k":"claimed","t":"{TEMPLATE}"}}').event_at is None
    assert parse_payload(f'{{"v":1,"k":"claimed","t":"{TEMPLATE}","at":5}}').event_at == 5.0


def test_unknown_keys_are_ignored_within_a_version() -> None:
    text = f'{{"v":1,"k":"claimed","t":"{TEMPLATE}","at":1,"extra":[1,2]}}'
    assert parse_payload(text).template_id == TEMPLATE


@given(
    kind=st.sampled_from(list(EventKind)),
    template=st.uuids(),
    at=st.none() | st.floats(min_value=0, max_value=4e9),
)
def test_format_and_parse_round_trip(kind: EventKind, template: UUID, at: float | None) -> None:
    event = Event(kind, None if kind.is_global else template, at)
    text = format_payload(event)
    assert parse_payload(text) == event
    assert len(text.encode()) < 200


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not JSON"),
        ("", "not JSON"),
        ("[1,2]", "not a JSON object"),
        ("null", "not a JSON object"),
        ('"settings_changed"', "not a JSON object"),
        ('{"k":"claimed","t":"@T"}', "version"),
        ('{"v":2,"k":"claimed","t":"@T"}', "unsupported payload version 2"),
        ('{"v":"1","k":"claimed","t":"@T"}', "version"),
        ('{"v":true,"k":"claimed","t":"@T"}', "version"),
        ('{"v":1.0,"k":"claimed","t":"@T"}', "version"),
        ('{"v":1,"t":"@T"}', "kind"),
        ('{"v":1,"k":7,"t":"@T"}', "kind"),
        ('{"v":1,"k":"exploded","t":"@T"}', "unknown event kind"),
        ('{"v":1,"k":"claimed"}', "needs a template id"),
        ('{"v":1,"k":"claimed","t":null}', "needs a template id"),
        ('{"v":1,"k":"claimed","t":42}', "needs a template id"),
        ('{"v":1,"k":"claimed","t":"not-a-uuid"}', "not a UUID"),
        ('{"v":1,"k":"settings_changed","t":"@T"}', "global"),
        ('{"v":1,"k":"claimed","t":"@T","at":"now"}', "'at' is not a number"),
        ('{"v":1,"k":"claimed","t":"@T","at":false}', "'at' is not a number"),
        ('{"v":1,"k":"claimed","t":"@T","at":-1}', "epoch"),
        ('{"v":1,"k":"claimed","t":"@T","at":1e999}', "epoch"),
        ('{"v":1,"k":"claimed","t":"@T","at":NaN}', "not a JSON number"),
        ('{"v":1,"k":"claimed","t":"@T","at":Infinity}', "not a JSON number"),
        ('{"v":1,"k":"claimed","t":"@T","at":' + "9" * 400 + "}", "out of range"),
    ],
)
def test_invalid_payloads_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidPayload, match=reason):
        parse_payload(text.replace("@T", str(TEMPLATE)))


def test_oversized_payload_is_refused_before_decoding() -> None:
    padding = "x" * MAX_PAYLOAD_BYTES
    text = json.dumps({"v": 1, "k": "claimed", "t": str(TEMPLATE), "pad": padding})
    with pytest.raises(InvalidPayload, match="longer than"):
        parse_payload(text)


def test_size_limit_counts_bytes_not_characters() -> None:
    text = json.dumps(
        {"v": 1, "k": "claimed", "t": str(TEMPLATE), "pad": "é" * 4000}, ensure_ascii=False
    )
    assert len(text) < MAX_PAYLOAD_BYTES < len(text.encode())
    with pytest.raises(InvalidPayload, match="longer than"):
        parse_payload(text)


def test_deep_nesting_is_invalid_not_a_recursion_error() -> None:
    with pytest.raises(InvalidPayload):
        parse_payload("[" * 5000 + "]" * 5000)


def test_huge_integer_is_invalid_not_a_value_error_leak() -> None:
    with pytest.raises(InvalidPayload):
        parse_payload('{"v":' + "1" * 5000 + "}")


def _parse_or_invalid(text: str) -> None:
    try:
        event = parse_payload(text)
    except InvalidPayload:
        return
    assert isinstance(event, Event)
    assert (event.template_id is None) == event.kind.is_global


@given(st.text(max_size=300))
def test_any_text_is_an_event_or_invalid(text: str) -> None:
    _parse_or_invalid(text)


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([*map(str, EventKind), str(TEMPLATE), str(uuid4())])
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["v", "k", "t", "at", "x"]),
        _json | st.sampled_from([1, 2, *map(str, EventKind), str(TEMPLATE)]),
    )
)
def test_any_json_object_is_an_event_or_invalid(fields: dict[str, object]) -> None:
    _parse_or_invalid(json.dumps(fields))


def test_changes_people_make_are_urgent_provisioner_progress_is_not() -> None:
    urgent = {kind for kind in EventKind if kind.is_urgent}
    assert urgent == {
        EventKind.VERSION_PROMOTED,
        EventKind.TEMPLATE_CHANGED,
        EventKind.PRESET_CHANGED,
        EventKind.SCHEDULE_CHANGED,
        EventKind.CLAIMED,
        EventKind.MISSED,
    }
