"""The Flower runtime: fedllm's messages over a SuperLink (the only package importing flwr).

:mod:`~fedllm.runtime.flower.records` puts a message in Flower records;
:mod:`~fedllm.runtime.flower.engine` is the engine a ServerApp drives rounds with,
and the adapter a ClientApp answers with.
"""
