"""Engines that carry out client work: the embedded simulator (and, later, Flower)."""
