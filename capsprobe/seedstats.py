"""Moved to :mod:`capsprobe.metrics.stats`; this old path stays for one release (a DeprecationWarning)."""

from ._compat import alias

alias(__name__)
