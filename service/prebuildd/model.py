"""Plain, frozen data that flows one way: store (SQL rows) -> plan (pure) -> executor (SQL writes).

Nothing in this module does I/O or reads the clock. Every timestamp is timezone-aware UTC.
Names follow Coder's schema so that a row read from `template_version_presets` is recognisable
here without a glossary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

# The system user that owns every unclaimed prebuilt workspace (fixed by Coder).
PREBUILDS_USER_ID = UUID("c42fdf75-3097-471c-8c33-fb52454d81c0")


class Transition(enum.StrEnum):
    """`workspace_transition` enum."""

    START = "start"
    STOP = "stop"
    DELETE = "delete"


class JobStatus(enum.StrEnum):
    """`provisioner_job_status` enum (derived by Coder from the job's timestamps and error)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELING = "canceling"
    CANCELED = "canceled"
    FAILED = "failed"
    UNKNOWN = "unknown"


class PrebuildStatus(enum.StrEnum):
    """`prebuild_status` enum stored on `template_version_presets`."""

    HEALTHY = "healthy"
    HARD_LIMITED = "hard_limited"
    VALIDATION_FAILED = "validation_failed"


# ---------------------------------------------------------------------------------------------
# Inputs: what the store reads for one preset.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preset:
    """A preset with a prebuild configuration (`desired_instances IS NOT NULL`) and its context."""

    id: UUID
    name: str
    template_id: UUID
    template_name: str
    organization_id: UUID
    organization_name: str
    template_version_id: UUID
    template_version_name: str
    using_active_version: bool
    template_deleted: bool
    template_deprecated: bool
    # As stored; may be negative (invalid input the planner reports and treats as 0).
    desired_instances: int
    # `invalidate_after_secs`: running prebuilds older than this are expired (None or <= 0: never).
    invalidate_after_secs: int | None = None
    # Prebuilds created before this instant are expired (set by `prebuildd invalidate`).
    last_invalidated_at: datetime | None = None
    # IANA zone the schedules are read in; '' means UTC.
    scheduling_timezone: str = ""
    prebuild_status: PrebuildStatus = PrebuildStatus.HEALTHY

    @property
    def is_active(self) -> bool:
        """Prebuilds are kept only for the active version of a live, non-deprecated template."""
        return (
            self.using_active_version and not self.template_deleted and not self.template_deprecated
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """A row of `template_version_preset_prebuild_schedules`."""

    id: UUID
    cron_expression: str
    desired_instances: int


@dataclass(frozen=True, slots=True)
class RunningPrebuild:
    """An unclaimed prebuild whose latest build is a succeeded `start`."""

    workspace_id: UUID
    name: str
    template_version_id: UUID
    preset_id: UUID
    created_at: datetime
    # Eligible for claiming: every top-level agent of the latest build is `ready`.
    ready: bool


@dataclass(frozen=True, slots=True)
class BuildRecord:
    """Latest `start` build of one unclaimed prebuild of the preset (for backoff / hard limit)."""

    created_at: datetime
    job_status: JobStatus


@dataclass(frozen=True, slots=True)
class InProgress:
    """Prebuilds of the preset whose latest build's job is pending or running, by transition."""

    starting: int = 0
    stopping: int = 0
    deleting: int = 0


# Hours in a week: demand is counted per hour of the week (0 = Monday 00:00-00:59 UTC).
HOURS_PER_WEEK = 168


class AutoscaleMode(enum.StrEnum):
    """How a preset's pool follows demand (`prebuildd autoscale set --mode`)."""

    OFF = "off"  # the template's desired count only; nothing is forecast
    FORECAST = "forecast"  # forecast and report the suggested size; act on nothing
    AUTO = "auto"  # aim for the suggested size (never below the template's count, never above max)


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    """A row of `prebuildd.autoscale_policies`: opt-in sizing of one (template, preset name).

    Keyed by the preset's *name* within its template, not by the preset's id, so it outlives
    promotions: every version's preset of that name is the same pool to the people using it.
    """

    template_id: UUID
    preset_name: str
    mode: AutoscaleMode
    min_instances: int
    max_instances: int


@dataclass(frozen=True, slots=True)
class DemandHistory:
    """Hits (claims) and misses of one (template, preset name) in [since, until), by hour of week.

    `until` is an hour boundary and the current hour is never included, so the history read
    at any instant of an hour is the history of the whole hour (prebuildd.demand caches it).
    `since` is `until` minus the history window, or later when the preset name is younger.
    """

    since: datetime
    until: datetime
    # HOURS_PER_WEEK counts each; index 0 is Monday 00:00-00:59 UTC.
    hits: tuple[int, ...]
    misses: tuple[int, ...]
    # Median seconds from queueing a prebuild's create to its job's success, over the latest
    # successful creates of the window; None when there was none.
    refill_seconds: float | None = None
    refill_samples: int = 0


@dataclass(frozen=True, slots=True)
class TemplateParameter:
    """A row of `template_version_parameters`: a parameter of the version, as imported."""

    name: str
    type: str = "string"
    display_name: str = ""
    # '' (the type's default form), 'multi-select', ...: `parameter_form_type` as text.
    form_type: str = ""
    required: bool = False
    default_value: str = ""
    # The values of the parameter's options, in order; () when it has none.
    options: tuple[str, ...] = ()
    validation_regex: str = ""
    validation_min: int | None = None
    validation_max: int | None = None
    validation_error: str = ""
    validation_monotonic: str = ""


@dataclass(frozen=True, slots=True)
class BuildInputs:
    """What Coder's workspace builder checks before it queues a preset's first build.

    Read only for presets on the active version of a live template (the only ones created).
    """

    # The version's parameters in Coder's order (display_order, then lower(name)).
    parameters: tuple[TemplateParameter, ...] = ()
    # The preset's own values (`template_version_preset_parameters`), name -> value.
    preset_values: tuple[tuple[str, str], ...] = ()
    # `template_version_workspace_tags`: tag key -> the HCL expression stored at import.
    workspace_tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PresetSnapshot:
    """Everything the planner needs to decide about one preset, read in one consistent snapshot."""

    preset: Preset
    schedules: tuple[Schedule, ...] = ()
    running: tuple[RunningPrebuild, ...] = ()
    in_progress: InProgress = InProgress()
    # Pending, not-yet-picked-up build-1 `start` prebuild jobs of this preset (inactive versions).
    pending_cancelable: int = 0
    # Latest `start` builds of the preset's unclaimed prebuilds, newest first; the store returns
    # at least max(desired, failure_hard_limit) of them when that many exist, and none when the
    # planner could act on none of them (no failure within the backoff lookback, newest not
    # failed: sql/queries/snapshot.sql, `recent`).
    recent_builds: tuple[BuildRecord, ...] = ()
    # Failed latest `start` builds of unclaimed prebuilds created within the backoff lookback.
    failures_in_lookback: int = 0
    # Parameters and workspace tags a create is checked against; None when there is nothing
    # to check (no parameter, preset value or tag) or it was not read (inactive presets): no
    # check is made then, and creates carry no workspace tags.
    inputs: BuildInputs | None = None
    # The autoscale policy of the preset's (template, name), if one exists and is not `off`,
    # and the demand it is sized from (read only for such presets).
    policy: AutoscalePolicy | None = None
    demand: DemandHistory | None = None


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """Knobs of the planner (defaults are Coder's)."""

    backoff_interval: timedelta = timedelta(minutes=1)
    backoff_lookback: timedelta = timedelta(hours=1)
    # 0 disables the hard limit.
    failure_hard_limit: int = 3
    # Bound on creates for one preset in one cycle; the remainder follows immediately after.
    max_creates_per_cycle: int = 500
    # At most this many prebuild create jobs waiting for a provisioner per organization and
    # provisioner tag set (prebuildd.throttle); 0: no cap.
    max_pending_prebuild_jobs: int = 0


# ---------------------------------------------------------------------------------------------
# Outputs: typed actions, executed by the store in transactions.
# ---------------------------------------------------------------------------------------------


class ActionKind(enum.StrEnum):
    CREATE = "create"
    DELETE = "delete"
    CANCEL_PENDING = "cancel_pending"
    SET_STATUS = "set_status"


class DeleteReason(enum.StrEnum):
    EXPIRED = "expired"
    SURPLUS = "surplus"
    INACTIVE = "inactive"


@dataclass(frozen=True, slots=True)
class Create:
    preset_id: UUID
    template_version_id: UUID
    count: int
    # The version's workspace tags evaluated for this preset (key -> value, sorted by key);
    # the create function checks them and merges them into the jobs' tags.
    workspace_tags: tuple[tuple[str, str], ...] = ()
    # > 0: create no more than leaves this many prebuild create jobs pending for the
    # organization and tag set of these jobs, counted by the database under the tag set's
    # lock (set by prebuildd.throttle when `max_pending_prebuild_jobs` is on).
    max_pending: int = 0
    kind: ActionKind = field(default=ActionKind.CREATE, init=False)


@dataclass(frozen=True, slots=True)
class Delete:
    preset_id: UUID
    # Oldest first; the executor re-checks ownership of each inside its transaction.
    workspace_ids: tuple[UUID, ...]
    reason: DeleteReason
    kind: ActionKind = field(default=ActionKind.DELETE, init=False)


@dataclass(frozen=True, slots=True)
class CancelPending:
    """Cancel the preset's pending prebuild jobs and soft-delete those never-built workspaces."""

    preset_id: UUID
    expected: int
    kind: ActionKind = field(default=ActionKind.CANCEL_PENDING, init=False)


@dataclass(frozen=True, slots=True)
class SetStatus:
    preset_id: UUID
    status: PrebuildStatus
    kind: ActionKind = field(default=ActionKind.SET_STATUS, init=False)


Action = Create | Delete | CancelPending | SetStatus


class InputErrorKind(enum.StrEnum):
    """What is wrong with a preset's settings (the `kind` label of `input_errors_total`)."""

    INVALID_CRON = "invalid_cron"
    INVALID_TIMEZONE = "invalid_timezone"
    OVERLAPPING_SCHEDULES = "overlapping_schedules"
    NEGATIVE_DESIRED = "negative_desired"
    # The preset's parameters fail the checks Coder's builder makes (the preset is stored
    # `validation_failed`; no workspace is created).
    INVALID_PARAMETER = "invalid_parameter"
    # A workspace tag of the version that prebuildd cannot evaluate: creates are held.
    UNEVALUATED_WORKSPACE_TAG = "unevaluated_workspace_tag"


@dataclass(frozen=True, slots=True)
class InputError:
    """Invalid input the planner met and worked around (it falls back to a safe value)."""

    kind: InputErrorKind
    # For people: names the preset's offending value (logs, `reconcile --dry-run`).
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class PresetState:
    """The numbers behind a plan (what `status` and `reconcile --dry-run` print)."""

    desired: int
    running: int
    eligible: int
    expired: int
    starting: int
    stopping: int
    deleting: int
    surplus: int
    to_create: int
    backoff_until: datetime | None
    hard_limited: bool
    # Stored `validation_failed`, or found invalid by this plan (which stores it).
    validation_failed: bool = False
    # Why creates of this preset are refused (invalid parameters) or held (a workspace tag
    # prebuildd cannot evaluate), for people: `status`, `reconcile --dry-run`, logs.
    creates_refused: str | None = None
    # Creates wanted now but held back by the cap on pending prebuild jobs (prebuildd.throttle).
    held: int = 0
    # With an autoscale policy (forecast or auto): the pool size the forecast suggests, and the
    # desired count the template itself configured (`desired` is what the plan aims for:
    # the suggested size in `auto` mode, the configured count otherwise). None without one.
    suggested: int | None = None
    configured: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The pure planner's verdict for one preset at one instant."""

    preset: Preset
    state: PresetState
    actions: tuple[Action, ...]
    # When this preset next needs a look even if nothing else happens (schedule boundary,
    # TTL expiry, backoff end, creates left over by the per-cycle bound); None: only events.
    next_attention: datetime | None
    # Human-readable reasons for the actions (and for holding back), for logs and --dry-run.
    reasons: tuple[str, ...] = ()
    # Invalid input found while planning (bad cron, unknown timezone, negative count, ...).
    errors: tuple[InputError, ...] = ()
