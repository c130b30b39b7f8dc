"""The errors of secure aggregation: a round that cannot finish, and a message that breaks
the protocol."""

from __future__ import annotations


class SecAggError(Exception):
    """Any failure of a secure-aggregation round."""


class SecAggAbort(SecAggError):
    """Too many clients dropped for the round to finish; nothing of it may be used.

    Attributes:
        reason: what made the round impossible, naming the clients and the counts.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SecAggViolation(SecAggError):
    """A message does not follow the protocol: malformed, out of phase, inconsistent with
    what its receiver knows, or asking to reveal what must stay secret. The receiver
    refuses it and takes no further part in the round."""


class AuthenticationError(SecAggViolation):
    """A ciphertext failed authentication: tampered, or redirected to another recipient,
    sender or round."""
