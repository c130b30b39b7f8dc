"""Evaluation of the global (or a client's) model."""
