"""Pure: a preset's parameter values checked the way Coder's workspace builder checks them.

Before Coder queues a prebuild's first build it resolves one value per parameter of the
template version (`template_version_parameters`) and refuses the build -- storing the preset as
`validation_failed`, creating no workspace -- when a value breaks the parameter's rules. This
module applies the same rules to the same rows, so that prebuildd refuses exactly those presets
instead of creating workspaces whose builds fail in the provisioner. Rules, in Coder's order
(parameters sorted by display_order, then lower-cased name; the first violation is reported):

1. the value is the preset's value for that name, else the parameter's default; a *required*
   parameter the preset gives no value for is invalid (a required parameter has no default);
2. a required parameter whose value is the empty string is invalid; an optional one with an
   empty value is checked with its default instead (the build still records the empty value);
3. with options, the value must be one of the options' values (for a `list(string)`
   parameter shown as `multi-select`: a JSON list whose every item is an option's value);
4. then, when the parameter has validation rules, or is a `bool` or a `list(string)`:
   * min, max and monotonic apply to `number` parameters only, a regex to `string` ones only;
     a rule on another type makes every value invalid;
   * `bool`: "true" or "false";
   * `string` with a regex: the regex must compile, carry an error message, and match
     somewhere in the value (an unanchored search);
   * `number`: a decimal integer (optional sign, no spaces, 64-bit), not below min nor above
     max (when set); monotonic must be "increasing" or "decreasing" (the comparison with a
     previous value never applies: a prebuild's first build has none); a number failing a
     rule reports the parameter's own error message when it has one, with {min}, {max} and
     {value} filled in;
   * `list(string)`: a JSON list of strings (or `null`).
   A type other than these four is not checked further.

A preset value whose name is no parameter of the version is ignored, as by Coder.

Where prebuildd cannot judge as Coder does, it does not judge (the value passes, and the plan
says so, `Verdict.unchecked`): a regex that Python's `re` does not read the way Go's RE2 does
(Unicode classes, POSIX classes, \\Q..\\E, \\z: anything `re` rejects or warns about).

The dynamic parameter flow (templates without `use_classic_parameter_flow`, Coder's default
since v2.25) renders the template's Terraform files to validate; prebuildd has no files and
applies the rules above to the parameters as imported. Constraints that the files compute from
other parameters or from the owner are therefore not evaluated: such a preset is created, and
a build that Coder's renderer would refuse fails in the provisioner instead (backoff, hard
limit), as before.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from prebuildd.model import TemplateParameter

__all__ = ["Verdict", "check_parameters"]

_INT64 = range(-(2**63), 2**63)
_DECIMAL = re.compile(r"[+-]?[0-9]+")
_MONOTONIC = ("increasing", "decreasing")
_PLACEHOLDER = re.compile(r"\{(min|max|value)\}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The parameters a build of the preset would get, or why the preset is invalid."""

    # One value per parameter of the version (what the build records, and what workspace
    # tags are evaluated with); complete only when `invalid` is None.
    values: Mapping[str, str]
    # For people: the first rule broken, naming the parameter; None when every value passes.
    invalid: str | None = None
    # Rules prebuildd could not evaluate (see the module docstring), for people.
    unchecked: tuple[str, ...] = ()


def check_parameters(
    parameters: Sequence[TemplateParameter], preset_values: Mapping[str, str]
) -> Verdict:
    """Resolve and check one value per parameter, in the order given (Coder's)."""
    values: dict[str, str] = {}
    unchecked: list[str] = []
    for parameter in parameters:
        given = preset_values.get(parameter.name)
        if given is None and parameter.required:
            problem: str | None = "required, and the preset sets no value for it"
        else:
            value = parameter.default_value if given is None else given
            problem = _check(parameter, value, unchecked)
            values[parameter.name] = value
        if problem is not None:
            return Verdict(values, f"parameter {_label(parameter)}: {problem}", tuple(unchecked))
    return Verdict(values, None, tuple(unchecked))


def _label(parameter: TemplateParameter) -> str:
    if parameter.display_name and parameter.display_name != parameter.name:
        return f"{parameter.name!r} ({parameter.display_name})"
    return repr(parameter.name)


def _check(parameter: TemplateParameter, value: str, unchecked: list[str]) -> str | None:
    if value == "":
        if parameter.required:
            return "required, and the preset sets it to the empty string"
        value = parameter.default_value
    if parameter.options and not _among_options(parameter, value):
        return f"{value!r} is not one of the options {list(parameter.options)}"
    if not _has_rules(parameter):
        return None
    return _rules(parameter, value, unchecked)


def _among_options(parameter: TemplateParameter, value: str) -> bool:
    if parameter.type == "list(string)" and parameter.form_type == "multi-select":
        items = _string_list(value)
        return items is not None and all(item in parameter.options for item in items)
    return value in parameter.options


def _has_rules(p: TemplateParameter) -> bool:
    return (
        p.validation_regex != ""
        or p.validation_min is not None
        or p.validation_max is not None
        or p.validation_monotonic != ""
        or p.type in ("bool", "list(string)")
    )


def _rules(p: TemplateParameter, value: str, unchecked: list[str]) -> str | None:
    kind = p.type
    if kind != "number":
        if p.validation_min is not None or p.validation_max is not None:
            return f"a {kind} parameter cannot have a min or max rule"
        if p.validation_monotonic:
            return f"a {kind} parameter cannot have a monotonic rule"
    if kind != "string" and p.validation_regex:
        return f"a {kind} parameter cannot have a regex rule"
    if kind == "bool":
        return None if value in ("true", "false") else f"{value!r} is neither true nor false"
    if kind == "string":
        return _regex_rule(p, value, unchecked)
    if kind == "number":
        return _number_rules(p, value)
    if kind == "list(string)" and _string_list(value) is None:
        return f"{value!r} is not a JSON list of strings"
    return None


def _regex_rule(p: TemplateParameter, value: str, unchecked: list[str]) -> str | None:
    if not p.validation_regex:
        return None
    pattern = _compiled(p.validation_regex)
    if pattern is None:
        unchecked.append(
            f"parameter {_label(p)}: regex {p.validation_regex!r} not checked "
            "(syntax prebuildd cannot read as Go's RE2 does)"
        )
        return None
    if not p.validation_error:
        return "a regex rule needs an error message"
    if pattern.search(value) is None:
        return f"{p.validation_error} ({value!r} does not match {p.validation_regex!r})"
    return None


@lru_cache(maxsize=1024)
def _compiled(regex: str) -> re.Pattern[str] | None:
    """The pattern, or None when Python's `re` might not read it as RE2 does."""
    # POSIX classes ([[:alpha:]]) compile in `re` with another meaning.
    if "[:" in regex:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(regex)
    except (re.error, Warning):
        return None


def _number_rules(p: TemplateParameter, value: str) -> str | None:
    if _DECIMAL.fullmatch(value) is None or int(value) not in _INT64:
        return _own_message(p, value) or f"{value!r} is not a whole number"
    number = int(value)
    if p.validation_min is not None and number < p.validation_min:
        return _own_message(p, value) or f"{number} is below the minimum {p.validation_min}"
    if p.validation_max is not None and number > p.validation_max:
        return _own_message(p, value) or f"{number} is above the maximum {p.validation_max}"
    if p.validation_monotonic and p.validation_monotonic not in _MONOTONIC:
        return f"monotonic must be 'increasing' or 'decreasing', not {p.validation_monotonic!r}"
    return None


def _own_message(p: TemplateParameter, value: str) -> str | None:
    """The parameter's error message with its placeholders filled (unset bounds read 0)."""
    if not p.validation_error:
        return None
    fills = {"min": str(p.validation_min or 0), "max": str(p.validation_max or 0), "value": value}
    # One pass, so that a filled-in value is never read as a placeholder.
    return _PLACEHOLDER.sub(lambda m: fills[m.group(1)], p.validation_error)


def _string_list(value: str) -> list[str] | None:
    """`value` as a JSON list of strings (JSON null reads as an empty list), else None."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if parsed is None:
        return []
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return parsed
    return None
