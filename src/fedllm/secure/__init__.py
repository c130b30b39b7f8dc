"""Secure aggregation: SecAgg+ (Bell et al. 2020) building blocks and the server's and
clients' round state machines, plus additive homomorphic aggregation under CKKS
(:mod:`fedllm.secure.he.ckks`, the ``he`` extra). Nothing here knows about models or
engines: vectors of integers or floats in, sums out."""
