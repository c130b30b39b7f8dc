"""The built-in algorithms, one folder each (the privacy and secure-aggregation families
keep their own: :mod:`fedllm.privacy`, :mod:`fedllm.secure`).

Each folder's ``__init__`` registers its factory in :data:`fedllm.components.ALGORITHMS`
and declares what it needs and refuses; ``client.py`` is its client half, ``server.py``
its server half. The core finds them by name through the registry and imports none of
them. See ``docs/extending.md`` for adding one.
"""
