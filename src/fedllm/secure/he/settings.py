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
        "he-keys`), read on each Flower node; none in the simulator: made per run.",
    )
    public_context: str | None = Field(
        None,
        description="The server's context without the secret key (same command), read by the "
        "Flower server; none in the simulator.",
    )
    flooding_bits: int = Field(
        20,
        ge=0,
        le=64,
        description="Statistical security s of the noise the decrypting client adds before "
        "the sum leaves it (Li-Micciancio-Schultz-Sorrell 2022, as OpenFHE's "
        "NOISE_FLOODING_DECRYPT): std sqrt(12 * server.rounds) * 2^(s/2) * the error bound, "
        "3.5e-5 * sqrt(server.rounds * cohort) per summed value at s = 20 (30: 32x more). "
        "0 turns it off: the server then gets the exact decryption and can recover the key.",
    )
