"""Simulated attacks on a federation: data poisoning and model poisoning, each one file
with its ``[attack.<name>]`` settings (see ``docs/security.md``)."""
