"""The key files of CKKS aggregation on a deployment (``fedllm he-keys OUT``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedllm.deploy.certs import write_key_file

SECRET_FILE = "he-secret.ctx"
PUBLIC_FILE = "he-public.ctx"


@dataclass(frozen=True)
class HEKeyFiles:
    """Where :func:`make_he_keys` wrote the contexts.

    Attributes:
        secret: the clients' context with the secret key (mode 0600): copy it to every
            node, set ``he.secret_context`` to it; never to the server.
        public: the server's context (mode 0644): set ``he.public_context`` to it.
    """

    secret: Path
    public: Path


def make_he_keys(out: Path, overwrite: bool = False) -> HEKeyFiles:
    """Make a CKKS key pair (default :class:`fedllm.secure.he.ckks.CkksSettings`) and write
    both contexts into ``out`` (created if missing).

    Raises:
        FileExistsError: a file exists there and ``overwrite`` is False.
        fedllm.secure.he.ckks.HEUnavailable: TenSEAL is not installed (the ``he`` extra).
    """
    from fedllm.secure.he import ckks as he

    files = HEKeyFiles(out / SECRET_FILE, out / PUBLIC_FILE)
    if not overwrite:
        for path in (files.secret, files.public):
            if path.exists():
                raise FileExistsError(f"{path} exists")
    keys = he.make_keys()
    out.mkdir(parents=True, exist_ok=True)
    write_key_file(files.secret, keys.secret_context, private=True, overwrite=overwrite)
    write_key_file(files.public, keys.public_context, private=False, overwrite=overwrite)
    return files
