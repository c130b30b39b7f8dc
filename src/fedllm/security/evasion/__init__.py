"""Adversarial examples against a trained model at inference (``fedllm attack RUN_DIR``).

- :mod:`~fedllm.security.evasion.pgd`: projected gradient ascent on the prompt's input
  embeddings under an L2 or Linf budget: how much the reference response's loss rises;
- :mod:`~fedllm.security.evasion.suffix`: a greedy coordinate search for an adversarial
  suffix of ``k`` tokens that makes the greedy reply start with a target string
  (Zou et al. 2023's GCG, one prompt at a time): the success rate at that budget.

Both run on the run's held-out test prompts (:mod:`~fedllm.security.evasion.prompts`)
and change nothing of the model.
"""
