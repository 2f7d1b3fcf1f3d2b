"""Staria: hierarchical symbolic-music generation with a snippet encoder and a cross-attending decoder."""

__version__ = "0.1.0"
