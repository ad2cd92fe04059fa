"""Optional encryption of payloads at rest, applied after compression: AES-SIV from
``cryptography``, a deterministic AEAD that stays safe when the same payload is encrypted
twice (equal payloads give equal bytes, so Redis still stores them once).

Turn it on with ``PAYLOAD_ENCRYPTION_KEYS=key-id:base64-key[,older-id:base64-key...]``: the
first key encrypts, every listed key decrypts, so a key rotation puts the new key first and
keeps the old ones until nothing encrypted with them is still needed. Make a key with
``uv run -m extras.encryption KEY-ID``. The payload's encoding and key-id names are this sample's
own, so another SDK's encryption codec never mistakes these payloads for its own.
Packages: cryptography, temporalio.

Neighbours: extras/cli.py; config.py. Packages: cryptography, temporalio.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import PayloadCodec
from temporalio.exceptions import ApplicationError

from config import ConfigError, Settings, connected_client
from extras.cli import ArgumentParser

ENCRYPTED_ENCODING = b"binary/redis-sample-aes-siv"
KEY_ID_METADATA = "redis-sample-key-id"
KEYS_VARIABLE = "PAYLOAD_ENCRYPTION_KEYS"
KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class EncryptionKey:
    """One named 256-bit secret. ``repr`` never shows the secret."""

    key_id: str
    secret: bytes = field(repr=False)


def parse_encryption_keys(raw: str) -> list[EncryptionKey]:
    """Parse ``key-id:base64-key[,key-id:base64-key...]``, newest first.

    Raises ``ValueError`` with one sentence that never contains key material.
    """
    keys: list[EncryptionKey] = []
    for number, entry in enumerate(raw.split(","), start=1):
        key_id, _, encoded = entry.strip().partition(":")
        if not _KEY_ID.fullmatch(key_id) or not encoded:
            raise ValueError(
                f"{KEYS_VARIABLE} entry {number} is not 'key-id:base64-key' (a key id is 1 to 64 "
                "letters, digits, '.', '_' or '-'); make one with "
                "`uv run -m extras.encryption KEY-ID`."
            )
        try:
            secret = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
        except binascii.Error:
            secret = b""
        if len(secret) != KEY_BYTES:
            raise ValueError(
                f"{KEYS_VARIABLE} key {key_id!r} is not {KEY_BYTES} base64-encoded bytes; "
                "make one with `uv run -m extras.encryption KEY-ID`."
            )
        if any(key.key_id == key_id for key in keys):
            raise ValueError(
                f"{KEYS_VARIABLE} lists key id {key_id!r} twice; give each key its own id."
            )
        keys.append(EncryptionKey(key_id, secret))
    return keys


def _derive(secret: bytes, purpose: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, None, purpose).derive(secret)


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload with AES-SIV (AES-256, from a key derived from the first key);
    decrypts with any listed key.

    The key id travels in the payload metadata and is authenticated with the data, so
    payloads written before a rotation still decode. Without keys this codec encrypts
    nothing, but an encrypted payload then fails at once with a non-retryable
    ``PayloadEncryptionKeyUnknown`` naming the key id, instead of failing to decode later.
    Payloads with another encoding pass through.
    """

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        for key in keys:
            if len(key.secret) != KEY_BYTES:
                raise ValueError(f"Encryption key {key.key_id!r} must be {KEY_BYTES} bytes.")
        self._current = keys[0].key_id if keys else None
        # AES-SIV takes a double-length key (two AES-256 keys), derived from the secret.
        self._siv = {k.key_id: AESSIV(_derive(k.secret, b"redis-sample-aes-siv", 64)) for k in keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(payload) for payload in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        if self._current is None:
            return payload
        key_id = self._current.encode()
        sealed = self._siv[self._current].encrypt(
            payload.SerializeToString(deterministic=True), [ENCRYPTED_ENCODING, key_id]
        )
        return Payload(
            metadata={"encoding": ENCRYPTED_ENCODING, KEY_ID_METADATA: key_id}, data=sealed
        )

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCRYPTED_ENCODING:
            return payload
        key_id = self._key_id(payload)
        try:
            plaintext = self._siv[key_id].decrypt(
                payload.data, [ENCRYPTED_ENCODING, key_id.encode()]
            )
        except InvalidTag:
            raise ApplicationError(
                f"A payload encrypted with key {key_id!r} failed authentication; it was "
                "changed after it was written, or the key with that id is not the one that "
                "encrypted it.",
                type="PayloadDecryptionError",
                non_retryable=True,
            ) from None
        return Payload.FromString(plaintext)

    def _key_id(self, payload: Payload) -> str:
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        if key_id not in self._siv:
            raise ApplicationError(
                f"A payload was encrypted with key {key_id!r}, which is not in this process's "
                f"{KEYS_VARIABLE}; set it there (after the current key) to read it.",
                type="PayloadEncryptionKeyUnknown",
                non_retryable=True,
            )
        return key_id


def codec_from_env(env: Mapping[str, str] = os.environ) -> EncryptionCodec:
    """The codec for ``PAYLOAD_ENCRYPTION_KEYS``; ``ConfigError`` for a bad value. Without
    keys it encrypts nothing, but a payload encrypted elsewhere then fails at once, naming
    the key id it needs."""
    try:
        return EncryptionCodec(
            parse_encryption_keys(env[KEYS_VARIABLE]) if env.get(KEYS_VARIABLE) else []
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


@contextlib.asynccontextmanager
async def encrypting_client(
    settings: Settings, *, address: str | None = None
) -> AsyncIterator[Client]:
    """``config.connected_client`` with the codec for ``PAYLOAD_ENCRYPTION_KEYS`` in the
    chain: what the extras' scripts connect with."""
    async with connected_client(settings, codecs=[codec_from_env()], address=address) as client:
        yield client


def new_key_entry(key_id: str) -> str:
    """A fresh ``key-id:base64-key`` entry for ``PAYLOAD_ENCRYPTION_KEYS``."""
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError(
            f"{key_id!r} is not a key id: use 1 to 64 letters, digits, '.', '_' or '-'."
        )
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def _key_id_flag(raw: str) -> str:
    if not _KEY_ID.fullmatch(raw):
        raise argparse.ArgumentTypeError(
            f"{raw[:70]!r} is not a key id: use 1 to 64 letters, digits, '.', '_' or '-'"
        )
    return raw


if __name__ == "__main__":
    parser = ArgumentParser(
        prog="extras.encryption",
        description="Print a new PAYLOAD_ENCRYPTION_KEYS entry, key-id:base64-key.",
    )
    parser.add_argument("key_id", type=_key_id_flag, nargs="?", default="k1", help="default k1")
    print(new_key_entry(parser.parse_args().key_id))
