"""The leakage audit of a trained run (``fedllm audit``): canary exposure (Carlini et al.
2019), membership inference (loss threshold, and calibrated against the untrained
model) and verbatim extraction of canary secrets.

``metrics`` (AUC, TPR at a low FPR) and ``exposure`` (ranks among candidate secrets)
are plain numpy; ``score`` and ``extract`` run a model; ``audit`` puts them together
for one run's model and data; ``table`` prints the result.
"""
