"""Data: sources, partitioning across clients, tokenization and batching.

Importing this package registers the built-in data sources and partitioners.
"""

from fedllm.data import skew, topic  # noqa: F401  (they register partitioners)
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
