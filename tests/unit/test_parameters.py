"""prebuildd.parameters: a preset's values against the version's parameters, rule by rule.

Each case is one of the checks Coder's builder makes before queueing a build (classic flow:
codersdk.ParameterResolver.ValidateResolve and the terraform provider's Validation.Valid),
with a value that passes and one that fails.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from prebuildd.model import TemplateParameter
from prebuildd.parameters import check_parameters


def param(name: str = "p", **changes: Any) -> TemplateParameter:
    return dataclasses.replace(TemplateParameter(name=name), **changes)


def invalid(parameter: TemplateParameter, value: str | None) -> str | None:
    values = {} if value is None else {parameter.name: value}
    return check_parameters([parameter], values).invalid


OPTIONS = ("eu", "us")
NUMBER = {"type": "number", "validation_min": 1, "validation_max": 8}


@pytest.mark.parametrize(
    ("changes", "value", "broken"),
    [
        # Required: a value must be given, and not be empty.
        ({"required": True}, None, "required, and the preset sets no value"),
        ({"required": True}, "", "sets it to the empty string"),
        ({"required": True}, "x", None),
        # Optional: the default stands in, also for an empty value.
        ({"default_value": "eu", "options": OPTIONS}, None, None),
        ({"default_value": "eu", "options": OPTIONS}, "", None),
        ({"default_value": "mars", "options": OPTIONS}, None, "'mars' is not one of the options"),
        # Options.
        ({"options": OPTIONS}, "us", None),
        ({"options": OPTIONS}, "asia", "'asia' is not one of the options ['eu', 'us']"),
        # multi-select list(string): every item an option.
        ({"type": "list(string)", "form_type": "multi-select", "options": OPTIONS},
         '["eu", "us"]', None),
        ({"type": "list(string)", "form_type": "multi-select", "options": OPTIONS},
         '["eu", "asia"]', "is not one of the options"),
        ({"type": "list(string)", "form_type": "multi-select", "options": OPTIONS},
         "eu", "is not one of the options"),
        # A list(string) that is not multi-select: the whole value is an option.
        ({"type": "list(string)", "options": ('["eu"]',)}, '["eu"]', None),
        # bool.
        ({"type": "bool"}, "true", None),
        ({"type": "bool"}, "True", "neither true nor false"),
        ({"type": "bool", "validation_regex": "x", "validation_error": "e"}, "true",
         "cannot have a regex rule"),
        # list(string).
        ({"type": "list(string)"}, '["a", "b"]', None),
        ({"type": "list(string)"}, "null", None),
        ({"type": "list(string)"}, '["a", 1]', "not a JSON list of strings"),
        ({"type": "list(string)"}, "a,b", "not a JSON list of strings"),
        # string with a regex: unanchored search, an error message is required.
        ({"validation_regex": "^[a-z]+$", "validation_error": "lower case only"}, "abc", None),
        ({"validation_regex": "b", "validation_error": "needs a b"}, "abc", None),
        ({"validation_regex": "^[a-z]+$", "validation_error": "lower case only"}, "ABC",
         "lower case only ('ABC' does not match '^[a-z]+$')"),
        ({"validation_regex": "^[a-z]+$"}, "abc", "a regex rule needs an error message"),
        ({"validation_min": 1}, "abc", "a string parameter cannot have a min or max rule"),
        ({"validation_monotonic": "increasing"}, "abc", "cannot have a monotonic rule"),
        # number: a decimal integer within the bounds.
        (NUMBER, "4", None),
        (NUMBER, "+4", None),
        (NUMBER, "0", "0 is below the minimum 1"),
        (NUMBER, "9", "9 is above the maximum 8"),
        (NUMBER, "4.0", "'4.0' is not a whole number"),
        (NUMBER, " 4", "is not a whole number"),
        (NUMBER, str(2**63), "is not a whole number"),
        ({"type": "number", "validation_max": 8,
          "validation_error": "between {min} and {max}, not {value}"}, "9",
         "between 0 and 8, not 9"),
        ({"type": "number", "validation_monotonic": "increasing"}, "3", None),
        ({"type": "number", "validation_monotonic": "upwards"}, "3", "monotonic must be"),
        # A number without rules is not checked at all (as in Coder).
        ({"type": "number"}, "many", None),
        # Unknown types are not checked further.
        ({"type": "map(string)"}, "anything", None),
    ],
)
def test_rules(changes: dict[str, Any], value: str | None, broken: str | None) -> None:
    found = invalid(param(**changes), value)
    if broken is None:
        assert found is None
    else:
        assert found is not None and broken in found, found


def test_first_violation_in_order_names_the_parameter() -> None:
    parameters = [
        param("region", options=OPTIONS, display_name="Region"),
        param("size", required=True),
    ]
    verdict = check_parameters(parameters, {"region": "asia"})
    assert verdict.invalid is not None
    assert verdict.invalid.startswith("parameter 'region' (Region): 'asia'")


def test_values_resolved_for_every_parameter() -> None:
    parameters = [
        param("region", default_value="eu"),
        param("size", default_value="small"),
        param("note", default_value="hello"),
    ]
    verdict = check_parameters(parameters, {"size": "large", "note": "", "unknown": "x"})
    assert verdict.invalid is None
    # The preset's value, else the default; an empty value is kept as given; names the
    # version does not declare are ignored.
    assert verdict.values == {"region": "eu", "size": "large", "note": ""}


@pytest.mark.parametrize("regex", [r"\p{L}+", "[[:alpha:]]+", r"\Qa.b\E", r"x\z"])
def test_regex_python_cannot_read_like_re2_is_not_judged(regex: str) -> None:
    verdict = check_parameters(
        [param(validation_regex=regex, validation_error="e")], {"p": "anything at all"}
    )
    assert verdict.invalid is None
    assert len(verdict.unchecked) == 1 and "not checked" in verdict.unchecked[0]
