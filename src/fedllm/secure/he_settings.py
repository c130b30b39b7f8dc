"""Config section of homomorphic aggregation: ``[he]``."""

from __future__ import annotations

from pydantic import Field

from fedllm.settings import Section


class HEConfig(Section):
    enabled: bool = Field(
        False,
        description="Aggregate under CKKS (TenSEAL, the 'he' extra): clients encrypt their "
        "updates, the server adds ciphertexts it cannot read, one client decrypts the sum.",
    )
    secret_context: str | None = Field(
        None,
        description="The clients' TenSEAL context with the secret key (a file from `fedllm "
        "deploy he-keys`), read on each Flower node; none in the simulator: made per run.",
    )
    public_context: str | None = Field(
        None,
        description="The server's context without the secret key (same command), read by the "
        "Flower server; none in the simulator.",
    )
