"""Shared session fixtures (each defined in its own module beside this file)."""
