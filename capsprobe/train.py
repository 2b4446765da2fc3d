"""Moved to :mod:`capsprobe.training.loop`; this old path stays for one release (a DeprecationWarning)."""

from ._compat import alias

alias(__name__)
