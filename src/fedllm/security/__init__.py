"""Security: simulated attacks and the defenses against them (docs/security.md).

``attacks/`` (the ``[attack]`` section: data poisoning and update attacks, one file
each), ``defenses/`` (robust aggregators, one file per rule), ``screening/``,
``forensics/`` (``server.keep_updates``), ``cleaning/`` and ``freelb/`` (client-side),
``evasion/`` (``fedllm attack RUN_DIR``). Nothing heavy at import time: a module holds
its settings and imports torch when it runs.
"""
