"""Experiments that chain the platform's entrypoints: wake-sleep and the Staria-vs-baseline
comparison. The end of the line: it may use every module, none uses it."""
