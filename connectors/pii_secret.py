"""Where the privacy secret (the HMAC key of pseudonyms and erasure confirmations) comes from.

The job graph carries only this description; each worker resolves the secret in ``open()``, so the
key itself is not serialized into the job graph. Order: the configured value, the environment
variable, the secret file (``personalize stack up`` writes a random one for the local stack).

Not named ``secrets``: ``flink run -pyfs connectors`` puts this directory on the workers' path, where
such a module would shadow the standard library's (numpy imports it).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from operators.privacy.pii import MIN_SECRET_BYTES, SecretError, resolve_secret

SECRET_FILE_NAME = "pii-secret"


@dataclass(frozen=True)
class SecretSource:
    configured: str
    env_name: str
    file: str

    def resolve(self) -> bytes:
        """The secret, or :class:`SecretError` saying where it was looked for."""
        secret = resolve_secret(self.configured, os.environ, self.env_name)
        if not secret and self.file and Path(self.file).is_file():
            secret = Path(self.file).read_text().strip().encode("utf-8")
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretError(f"privacy needs a secret of at least {MIN_SECRET_BYTES} bytes: set privacy.secret, "
                              f"${self.env_name} or the file {self.file or '(none configured)'}")
        return secret


def ensure_secret_file(path: Path) -> None:
    """A random secret for the local stack, readable only by its owner; kept if it exists (pseudonyms
    stay stable across stack restarts)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
