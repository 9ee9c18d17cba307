"""Shared session fixtures (each defined in its own module beside this file)."""

from fixture_model import exported_model, model  # noqa: F401
from fixture_recipe import demo_images, demo_recipe  # noqa: F401
from fixture_bundle import staged  # noqa: F401
