"""The create cap's lines (prebuildd.throttle): read their inputs, record who waits in them.

Both run in the reconcile's transaction (sql/queries/throttle.sql); the lines are only ever
written under the advisory locks of their tag sets, which `read_throttle_lines` takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from uuid import UUID

from psycopg.types.json import Jsonb

from prebuildd.store.statements import Conn, Row, fetch, unique
from prebuildd.throttle import CreateKey, Lines, TagSet, Wait


async def read_throttle_lines(
    conn: Conn,
    creates: Iterable[CreateKey],
    template_ids: Sequence[UUID],
    *,
    take_locks: bool,
) -> Lines:
    """The cap's inputs for one reconcile (sql/queries/throttle.sql), one round trip.

    The tag sets of the planned `creates` (`throttle.create_key`: a version and the workspace
    tags evaluated for the preset) and those `template_ids`' presets wait on: their pending
    prebuild create jobs and their lines. With `take_locks`, their advisory locks are taken
    first and held until the caller's transaction ends: nobody else creates for those tag
    sets, or changes their lines, until then.
    """
    keys = list(dict.fromkeys(creates))
    params = {
        "version_ids": [version for version, _ in keys],
        "create_tags": Jsonb([dict(tags) for _, tags in keys]),
        "template_ids": unique(template_ids),
        "take_locks": take_locks,
    }
    rows = await fetch(conn, "throttle_lines", params)
    return lines_from_rows(rows)


def lines_from_rows(rows: Iterable[Row]) -> Lines:
    of_create: dict[CreateKey, TagSet] = {}
    pending: dict[TagSet, int] = {}
    waiting: list[Wait] = []
    for row in rows:
        kind, version_id, workspace_tags, org_id, tags, count, preset_id, template_id = row[:8]
        held, since = row[8:]
        tag_set = TagSet(org_id, tags)
        if kind == "version":
            of_create[(version_id, tuple(sorted(workspace_tags.items())))] = tag_set
        elif kind == "key":
            pending[tag_set] = count
        elif kind == "waiter":
            waiting.append(Wait(preset_id, template_id, tag_set, held, since))
        else:
            raise ValueError(f"throttle_lines returned an unknown kind {kind!r}")
    return Lines(of_create, pending, tuple(waiting))


async def record_throttle_waits(
    conn: Conn, template_ids: Sequence[UUID], waits: Sequence[Wait]
) -> int:
    """Replace the line entries of `template_ids` by `waits`; returns how many they have now.

    Call it in the transaction whose `read_throttle_lines(take_locks=True)` locked their tag
    sets: the lines are only ever written under those locks.
    """
    params = {
        "template_ids": unique(template_ids),
        "preset_ids": [w.preset_id for w in waits],
        "preset_templates": [w.template_id for w in waits],
        "organization_ids": [w.tag_set.organization_id for w in waits],
        "tag_sets": [w.tag_set.tags for w in waits],
        "held": [w.held for w in waits],
        "waiting_since": [w.since for w in waits],
    }
    rows = await fetch(conn, "record_throttle_waits", params)
    return int(rows[0][0]) if rows else 0
