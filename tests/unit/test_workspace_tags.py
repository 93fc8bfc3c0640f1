"""prebuildd.workspace_tags: the expressions evaluated, and everything else refused with why."""

from __future__ import annotations

import pytest

from prebuildd.workspace_tags import evaluate_workspace_tags

PARAMS = {"region": "eu-west", "gpu": "", "zone-name": "b"}


def value(expression: str) -> str:
    verdict = evaluate_workspace_tags([("k", expression)], PARAMS)
    assert verdict.unevaluated is None, verdict.unevaluated
    return dict(verdict.tags)["k"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('"us-east"', "us-east"),
        ('  "spaced"  ', "spaced"),
        ('""', ""),
        ("true", "true"),
        ("false", "false"),
        ("42", "42"),
        ("-7", "-7"),
        ("007", "7"),
        ("data.coder_parameter.region.value", "eu-west"),
        ("data.coder_parameter.region", "eu-west"),
        ("data.coder_parameter.zone-name.value", "b"),
        ("data.coder_parameter.gpu.value", ""),
        ("(data.coder_parameter.region.value)", "eu-west"),
        ('"${data.coder_parameter.region.value}-gpu"', "eu-west-gpu"),
        ('"${ data.coder_parameter.region.value }/${true}/${12345678901}"',
         "eu-west/true/12345678901"),
        ('"${"nested"}"', "nested"),
        ('"a\\"b\\\\c\\n\\u00e9"', 'a"b\\c\né'),
        ('"$${literal} %%{also}"', "${literal} %{also}"),
    ],
)
def test_evaluated(expression: str, expected: str) -> None:
    assert value(expression) == expected


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("var.region", "template variables"),
        ('"${var.region}"', "template variables"),
        ("data.coder_parameter.missing.value", "which the version does not have"),
        ("data.coder_workspace_owner.me.name", "other data sources"),
        ("data.coder_parameter.region.name", "only a parameter's .value"),
        ('"${data.coder_parameter.region}"', "only a parameter's .value"),
        ('data.coder_parameter["region"].value', "attribute references"),
        ('lower("EU")', "'lower' is not evaluated"),
        ('data.coder_parameter.region.value == "eu" ? "a" : "b"', "unsupported syntax"),
        ("1.5", "unsupported syntax"),
        ("1e3", "unsupported syntax"),
        ("12345678901", "more than ten digits"),
        ("null", "'null' is not evaluated"),
        ('"%{ if true }x%{ endif }"', "template directives"),
        ('"${~ true ~}"', "strip markers"),
        ('"open', "unterminated string"),
        ('"bad \\q escape"', "unsupported escape"),
        ("<<EOT\nx\nEOT", "unsupported syntax"),
        ("", "unsupported syntax"),
    ],
)
def test_not_evaluated(expression: str, why: str) -> None:
    verdict = evaluate_workspace_tags([("k", expression)], PARAMS)
    assert verdict.unevaluated is not None and why in verdict.unevaluated, verdict.unevaluated
    assert "workspace tag 'k'" in verdict.unevaluated


def test_every_problem_is_named_and_evaluated_tags_are_sorted() -> None:
    verdict = evaluate_workspace_tags(
        [("zone", '"z1"'), ("region", "var.region"), ("arch", '"arm64"'), ("os", "local.os")],
        PARAMS,
    )
    assert verdict.tags == (("arch", "arm64"), ("zone", "z1"))
    assert verdict.unevaluated is not None
    assert "'region'" in verdict.unevaluated and "'os'" in verdict.unevaluated
    assert evaluate_workspace_tags([], PARAMS).tags == ()
