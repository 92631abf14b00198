"""The composition root: the `lading` command and the embedded one-process registry.

The only package that wires `api` and `workers` together (both stay ignorant of each other).
"""
