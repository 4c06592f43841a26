"""Griffe extension for the API reference: this project's docstrings head their examples ``Example:``; griffe's
Google parser renders doctest code only in an ``Examples:`` section, so read the one as the other."""

from __future__ import annotations

import re

import griffe


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = re.sub(r"^(\s*)Example:\s*$", r"\1Examples:", obj.docstring.value, flags=re.M)
