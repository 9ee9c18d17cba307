"""Shared fixtures (each defined in its own module beside this file)."""

from fixture_model import exported_model, model, sidecar  # noqa: F401
from fixture_recipe import demo_images, demo_recipe, recipe_copy  # noqa: F401
