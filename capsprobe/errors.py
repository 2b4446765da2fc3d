"""capsprobe's own error types: one base class, so the CLI turns exactly these (and nothing else) into one line.

Library messages never name command-line flags. Where a message points at an option, it writes
``option("force")``: the library renders it as the keyword argument (```force```), the CLI as the flag
(``--force``). An unexpected bug is not a :class:`CapsprobeError` and keeps its traceback.
"""

from __future__ import annotations

import re
from typing import Callable

__all__ = [
    "CapsprobeError",
    "InvalidInputError",
    "option",
    "render",
]

_OPTION = re.compile(r"<<([a-z][a-z0-9_]*)>>")


def option(name: str) -> str:
    """A reference to the option ``name`` inside an error message (rendered per audience by :func:`render`)."""
    return f"<<{name}>>"


def render(message: str, style: Callable[[str], str] = lambda name: f"`{name}`") -> str:
    """``message`` with every :func:`option` reference written by ``style`` (default: the Python keyword)."""
    return _OPTION.sub(lambda m: style(m.group(1)), message)


class CapsprobeError(Exception):
    """Base of every error capsprobe raises on purpose (bad input, a missing file, a refused overwrite).

    ``str(error)`` names options as Python keywords; :attr:`template` keeps the references for the CLI.
    """

    def __init__(self, message: str = ""):
        self.template = str(message)
        super().__init__(render(self.template))


class InvalidInputError(CapsprobeError, ValueError):
    """A value outside what a function accepts (an unknown name, a magnitude out of range, a bad size)."""
