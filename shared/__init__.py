"""Loopdeck's shared layer: the one schema, the store verbs, workflow definitions, settings.

`api/` and `runner/` both build on this package and never on each other.
"""

__version__ = "0.1.0"
