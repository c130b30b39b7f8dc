"""Poisoning attacks and defenses: robust aggregators (``defenses/``), one file per rule.

See docs/security.md. Nothing heavy at import time: a rule's module holds its settings
and its aggregator, and imports torch when it aggregates.
"""
