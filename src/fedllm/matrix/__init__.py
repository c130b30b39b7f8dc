"""A matrix of runs from one file: every attack x defense x malicious fraction (x data
partition), each cell a run of one base config with overrides, collected into
``matrix.json`` and heat maps (``fedllm matrix``; see docs/security.md)."""
