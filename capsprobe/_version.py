"""The package version, a leaf (runtime, runs and the report read it without importing the package face)."""

__version__ = "0.2.0"
