"""The error every migrate step ends with when the database cannot be brought up to date."""

from __future__ import annotations


class MigrationError(RuntimeError):
    """The database cannot be brought to the expected schema; the message says why."""
