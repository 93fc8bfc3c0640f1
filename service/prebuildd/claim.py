"""Claim a prebuilt workspace for a user, inside the caller's transaction.

`claim(conn, preset_id=..., user_id=..., name=...)` runs one statement (one round trip) on
the caller's connection and never commits or rolls back: the caller decides. In that
statement it picks one eligible prebuild of the preset with `FOR UPDATE SKIP LOCKED`, hands
it to the user (owner, name, timestamps, lifecycle fields as a fresh user workspace), queues
the user-initiated `start` build (`prebuilt_workspace_stage` 2, parameters copied from the
prebuild's build, a pending job shaped like the version's import job) and posts
`provisioner_job_posted`, which PostgreSQL delivers only if the caller commits.

Results:
- `Claimed` — the workspace now belongs to the user (once the caller commits);
- `None` — no eligible prebuild right now: an expected outcome, not an error. Callers create
  a workspace the ordinary way. (`None` rather than a sentinel object so that the type checker
  makes every caller handle it.)

Refusals raise a `ClaimError` subclass. `InvalidWorkspaceName`, `UnknownUser` and
`WorkspaceNameTaken` (when detected up front) write nothing and leave the transaction usable.
Errors raised by PostgreSQL (a racing insert of the same name, or `ClaimConflict` when another
build was queued for the chosen prebuild at the same moment) abort the caller's transaction,
as any SQL error does: roll back, and retry in a new transaction if wanted.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

from prebuildd.model import PREBUILDS_USER_ID
from prebuildd.queries import query

# Coder's rule for workspace names (codersdk.NameValid): lowercase/uppercase letters and
# digits in groups joined by single hyphens, at most 32 characters, not a reserved word.
_NAME = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
_NAME_MAX = 32
_RESERVED_NAMES = frozenset({"new", "create"})

# Constraint names are Coder's (sql/schema keeps them), so the translation works on both.
_NAME_INDEX = "workspaces_owner_id_lower_idx"
_BUILD_NUMBER_KEY = "workspace_builds_workspace_id_build_number_key"


@dataclass(frozen=True, slots=True)
class Claimed:
    """The prebuild handed to the user and the `start` build queued for them."""

    workspace_id: UUID
    name: str
    build_id: UUID
    job_id: UUID


class ClaimError(Exception):
    """A claim was refused; nothing was claimed."""


class InvalidWorkspaceName(ClaimError, ValueError):
    """The requested name breaks Coder's workspace-name rules."""


class InvalidClaim(ClaimError, ValueError):
    """The request itself makes no sense (e.g. claiming for the prebuilds user)."""


class UnknownUser(ClaimError):
    """The user does not exist or is deleted."""


class WorkspaceNameTaken(ClaimError):
    """The user already has a live workspace with that name (case-insensitive)."""


class ClaimConflict(ClaimError):
    """Another build was queued for the chosen prebuild concurrently; retry in a new transaction."""


def validate_name(name: str) -> None:
    """Raise InvalidWorkspaceName unless Coder would accept `name` for a workspace."""
    if not name:
        raise InvalidWorkspaceName("workspace name must not be empty")
    if len(name) > _NAME_MAX:
        raise InvalidWorkspaceName(f"workspace name must be at most {_NAME_MAX} characters")
    if not _NAME.fullmatch(name):
        raise InvalidWorkspaceName(
            f"workspace name {name!r} must be letters and digits in groups joined by single hyphens"
        )
    if name.lower() in _RESERVED_NAMES:
        raise InvalidWorkspaceName(f"{name!r} is reserved and cannot name a workspace")


def claim_params(
    *, preset_id: UUID, user_id: UUID, name: str, now: datetime | None
) -> dict[str, Any]:
    """Validated parameters of the `claim_prebuild` query (ids of the new rows included)."""
    validate_name(name)
    if user_id == PREBUILDS_USER_ID:
        raise InvalidClaim("a prebuild cannot be claimed for the prebuilds user itself")
    if now is not None and now.tzinfo is None:
        raise InvalidClaim("`now` must be timezone-aware")
    return {
        "preset_id": preset_id,
        "user_id": user_id,
        "name": name,
        # None: the database's now() (the query says so); never this host's clock.
        "now": now,
        # Generated here so that the job's input can name the build it belongs to.
        "build_id": uuid.uuid4(),
        "job_id": uuid.uuid4(),
    }


def interpret(row: dict[str, Any] | None, *, user_id: UUID, name: str) -> Claimed | None:
    """Turn the query's single result row into the outcome (pure)."""
    if row is None:
        raise RuntimeError("claim_prebuild returned no row; it always returns exactly one")
    if not row["user_ok"]:
        raise UnknownUser(f"user {user_id} does not exist or is deleted")
    if row["name_taken"]:
        raise WorkspaceNameTaken(f"user {user_id} already has a workspace named {name!r}")
    if row["workspace_id"] is None:
        return None
    return Claimed(
        workspace_id=row["workspace_id"],
        name=row["name"],
        build_id=row["build_id"],
        job_id=row["job_id"],
    )


def translate(exc: errors.UniqueViolation, *, user_id: UUID, name: str) -> Exception:
    """Map the unique violations a racing writer can cause to ClaimErrors; others unchanged."""
    constraint = exc.diag.constraint_name
    if constraint == _NAME_INDEX:
        return WorkspaceNameTaken(
            f"user {user_id} already has a workspace named {name!r} (created concurrently)"
        )
    if constraint == _BUILD_NUMBER_KEY:
        return ClaimConflict("another build was queued for the chosen prebuild at the same time")
    return exc


def claim(
    conn: psycopg.Connection[Any],
    *,
    preset_id: UUID,
    user_id: UUID,
    name: str,
    now: datetime | None = None,
) -> Claimed | None:
    """Claim one eligible prebuild of `preset_id` for `user_id` as `name`, in `conn`'s transaction.

    Returns None when no prebuild is eligible. Never commits: the claim, the new build and the
    provisioner notification take effect when the caller commits, and vanish if it rolls back.
    """
    params = claim_params(preset_id=preset_id, user_id=user_id, name=name, now=now)
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query("claim_prebuild"), params)
            row = cur.fetchone()
    except errors.UniqueViolation as exc:
        raise translate(exc, user_id=user_id, name=name) from exc
    return interpret(row, user_id=user_id, name=name)


async def claim_async(
    conn: psycopg.AsyncConnection[Any],
    *,
    preset_id: UUID,
    user_id: UUID,
    name: str,
    now: datetime | None = None,
) -> Claimed | None:
    """`claim` for an async connection (same query, same outcomes)."""
    params = claim_params(preset_id=preset_id, user_id=user_id, name=name, now=now)
    try:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("claim_prebuild"), params)
            row = await cur.fetchone()
    except errors.UniqueViolation as exc:
        raise translate(exc, user_id=user_id, name=name) from exc
    return interpret(row, user_id=user_id, name=name)
