"""Staria: hierarchical symbolic-music generation with snippet-conditioned transformers."""

__version__ = "0.1.0"
