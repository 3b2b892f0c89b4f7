# cython: language_level=3
"""Placeholder until the scanner decoders land."""

def version():
    return 0
