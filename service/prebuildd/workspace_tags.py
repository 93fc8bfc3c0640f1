"""Pure: a template version's workspace tags, evaluated for one preset as Coder's builder would.

A template routes its builds with `data "coder_workspace_tags"`: at import Coder stores each
tag's key and the *source text* of its value expression (`template_version_workspace_tags`),
and when it queues a build it evaluates those expressions with the build's parameter values
and adds the results to the job's tags, so that only a provisioner carrying the same tags
(a region, a GPU pool) picks the job up. A prebuild's job must carry them too.

The rule (what prebuildd evaluates, and what it does with the rest):

    prebuildd evaluates a workspace tag whose value is a string, whole-number or bool
    literal, a reference to a parameter (`data.coder_parameter.<name>.value`, resolved to
    the preset's value or else the parameter's default), or a quoted string interpolating
    those ("${data.coder_parameter.region.value}-gpu"); for any other expression (template
    variables, functions, conditionals, other data sources, heredocs) it creates no
    prebuild for the preset: the plan holds its creates with the reason, which is logged,
    counted (prebuildd_input_errors_total{kind="unevaluated_workspace_tag"}) and shown by
    `prebuildd status`, rather than queueing jobs that no provisioner would pick up (a job
    nobody takes is failed after 30 minutes, and counts toward backoff and the hard limit).

Values come out as Coder turns them into strings: a bool as "true"/"false", a whole number in
decimal; an empty result is kept (a tag with an empty value). Numbers with a fraction or an
exponent, and whole numbers of more than ten digits, are not evaluated (Coder prints those in
a floating-point notation not reproduced here). Keys are taken as stored.

The create function merges the result into the job's tags the way Coder does (the workspace
tags override the import job's) and derives the `owner` tag from the `scope` itself
(sql/functions/prebuild_writes.sql).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["TagVerdict", "evaluate_workspace_tags"]


@dataclass(frozen=True, slots=True)
class TagVerdict:
    """The evaluated tags, or why some could not be evaluated."""

    # key -> value, sorted by key; complete only when `unevaluated` is None.
    tags: tuple[tuple[str, str], ...] = ()
    # For people: every tag that could not be evaluated, and why; None when all were.
    unevaluated: str | None = None


def evaluate_workspace_tags(
    expressions: Sequence[tuple[str, str]], parameters: Mapping[str, str]
) -> TagVerdict:
    """Evaluate each (key, expression) with the build's parameter values (name -> value)."""
    tags: dict[str, str] = {}
    problems: list[str] = []
    for key, expression in expressions:
        try:
            tags[key] = _Parser(expression, parameters).whole()
        except _NotEvaluated as why:
            problems.append(f"workspace tag {key!r} = {expression.strip()!r}: {why}")
    if problems:
        return TagVerdict(tuple(sorted(tags.items())), "; ".join(problems))
    return TagVerdict(tuple(sorted(tags.items())))


class _NotEvaluated(Exception):
    """The expression is outside what this module evaluates; the message says what."""


# HCL identifiers (letters, digits, underscores and dashes, not starting with a digit).
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_WHOLE = re.compile(r"-?[0-9]+(?![0-9.eE])")
_SPACE = re.compile(r"\s*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_MAX_DIGITS = 10


class _Parser:
    """Recursive descent over one expression of the supported subset."""

    def __init__(self, text: str, parameters: Mapping[str, str]) -> None:
        self.text = text
        self.at = 0
        self.parameters = parameters

    def whole(self) -> str:
        value = self._expression(interpolated=False)
        self._skip_space()
        if self.at != len(self.text):
            raise _NotEvaluated(f"unsupported syntax at {self.text[self.at:self.at + 20]!r}")
        return value

    # -- expressions ---------------------------------------------------------------------------

    def _expression(self, *, interpolated: bool) -> str:
        self._skip_space()
        rest = self.text[self.at:]
        if rest.startswith('"'):
            return self._quoted()
        if rest.startswith("("):
            self.at += 1
            value = self._expression(interpolated=interpolated)
            self._expect(")")
            return value
        number = _WHOLE.match(rest)
        if number:
            return self._whole_number(number.group(), interpolated=interpolated)
        name = _IDENT.match(rest)
        if name is None:
            raise _NotEvaluated(f"unsupported syntax at {rest[:20]!r}")
        word = name.group()
        self.at += len(word)
        if word in ("true", "false"):
            return word
        if word == "data":
            return self._parameter_reference(interpolated=interpolated)
        if word == "var":
            raise _NotEvaluated("template variables are not evaluated by prebuildd")
        raise _NotEvaluated(f"{word!r} is not evaluated by prebuildd")

    def _whole_number(self, digits: str, *, interpolated: bool) -> str:
        self.at += len(digits)
        # Coder prints a bare number with ten significant digits (exponent beyond), an
        # interpolated one in full: the same text up to ten digits.
        if not interpolated and len(digits.lstrip("-")) > _MAX_DIGITS:
            raise _NotEvaluated("numbers of more than ten digits are not evaluated")
        return str(int(digits))

    def _parameter_reference(self, *, interpolated: bool) -> str:
        self._expect_attribute("coder_parameter", "other data sources are not evaluated")
        name = self._attribute()
        # A bare `data.coder_parameter.x` is an object whose string form is its value, but
        # only outside a template: interpolating it is an error.
        if self.text.startswith(".", self.at):
            self._expect_attribute("value", "only a parameter's .value is evaluated")
        elif interpolated:
            raise _NotEvaluated("only a parameter's .value is evaluated inside a string")
        if name not in self.parameters:
            raise _NotEvaluated(f"refers to parameter {name!r}, which the version does not have")
        return self.parameters[name]

    def _expect_attribute(self, expected: str, otherwise: str) -> None:
        if self._attribute() != expected:
            raise _NotEvaluated(otherwise)

    def _attribute(self) -> str:
        if not self.text.startswith(".", self.at):
            raise _NotEvaluated("only attribute references (a.b.c) are evaluated")
        self.at += 1
        name = _IDENT.match(self.text, self.at)
        if name is None:
            raise _NotEvaluated("index or splat expressions are not evaluated")
        self.at = name.end()
        return name.group()

    # -- quoted templates ---------------------------------------------------------------------

    def _quoted(self) -> str:
        self.at += 1  # the opening quote
        out: list[str] = []
        text = self.text
        while self.at < len(text):
            char = text[self.at]
            if char == '"':
                self.at += 1
                return "".join(out)
            if char == "\\":
                out.append(self._escape())
            elif text.startswith("$${", self.at) or text.startswith("%%{", self.at):
                out.append(text[self.at + 1:self.at + 3])
                self.at += 3
            elif text.startswith("${", self.at):
                out.append(self._interpolation())
            elif text.startswith("%{", self.at):
                raise _NotEvaluated("template directives (%{...}) are not evaluated")
            elif char == "\n":
                raise _NotEvaluated("a quoted string cannot span lines")
            else:
                out.append(char)
                self.at += 1
        raise _NotEvaluated("unterminated string")

    def _escape(self) -> str:
        code = self.text[self.at + 1:self.at + 2]
        if code in _ESCAPES:
            self.at += 2
            return _ESCAPES[code]
        width = {"u": 4, "U": 8}.get(code)
        digits = self.text[self.at + 2:self.at + 2 + width] if width else ""
        if width and len(digits) == width and all(c in "0123456789abcdefABCDEF" for c in digits):
            self.at += 2 + width
            return chr(int(digits, 16))
        raise _NotEvaluated(f"unsupported escape \\{code}")

    def _interpolation(self) -> str:
        self.at += 2  # ${
        if self.text.startswith("~", self.at):
            raise _NotEvaluated("strip markers (${~ ...}) are not evaluated")
        value = self._expression(interpolated=True)
        self._skip_space()
        self._expect("}")
        return value

    # -- lexing --------------------------------------------------------------------------------

    def _skip_space(self) -> None:
        match = _SPACE.match(self.text, self.at)
        if match:
            self.at = match.end()

    def _expect(self, token: str) -> None:
        self._skip_space()
        if not self.text.startswith(token, self.at):
            raise _NotEvaluated(f"expected {token!r} at {self.text[self.at:self.at + 20]!r}")
        self.at += len(token)
