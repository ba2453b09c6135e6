"""Ouroboros: a harness for autonomous research loops."""

from ouroboros.errors import OuroborosError

__all__ = ["OuroborosError"]
__version__ = "0.1.0"
