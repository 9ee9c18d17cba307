"""Shared session fixtures (each defined in its own module beside this file)."""

from fixture_model import exported_model  # noqa: F401
