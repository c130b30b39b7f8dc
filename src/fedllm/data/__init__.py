"""Data: sources, partitioning across clients, tokenization and batching.

The names below import their module on first use (:mod:`fedllm.lazy`). The
built-in data sources and partitioners register when their modules are
imported (``fedllm.components.load_builtin``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.lazy import lazy_exports

if TYPE_CHECKING:
    from fedllm.data.build import (
        ClientData,
        ClientRecords,
        FederatedData,
        RecordSplit,
        build_client_records,
        build_federated_data,
    )
    from fedllm.data.format import IGNORE_INDEX, Example, collate
    from fedllm.data.partition import Partition
    from fedllm.data.sources import DataError, Record, load_records

_HOMES = {
    "ClientData": "build",
    "ClientRecords": "build",
    "FederatedData": "build",
    "RecordSplit": "build",
    "build_client_records": "build",
    "build_federated_data": "build",
    "IGNORE_INDEX": "format",
    "Example": "format",
    "collate": "format",
    "Partition": "partition",
    "DataError": "sources",
    "Record": "sources",
    "load_records": "sources",
}
__all__ = [
    "IGNORE_INDEX",
    "ClientData",
    "ClientRecords",
    "DataError",
    "Example",
    "FederatedData",
    "Partition",
    "Record",
    "RecordSplit",
    "build_client_records",
    "build_federated_data",
    "collate",
    "load_records",
]
__getattr__ = lazy_exports(__name__, _HOMES)
