"""Torch datasets over a built cohort: they read the preprocessing cache only, never the source files."""
