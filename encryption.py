"""Optional AES-GCM encryption of payloads at rest, applied after compression.

Turn it on with ``PAYLOAD_ENCRYPTION_KEYS=key-id:base64-key[,older-id:base64-key...]``: the
first key encrypts, every listed key decrypts, so a key rotation puts the new key first and
keeps the old ones until nothing encrypted with them is still needed. Make a key with
``uv run encryption.py KEY-ID``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec
from temporalio.exceptions import ApplicationError

ENCRYPTED_ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEYS_VARIABLE = "PAYLOAD_ENCRYPTION_KEYS"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class EncryptionKey:
    """One named AES-256 key. ``repr`` never shows the secret."""

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
                f"{KEYS_VARIABLE} entry {number} is not 'key-id:base64-key' (a key id is 1 to "
                "64 letters, digits, '.', '_' or '-'); make one with `uv run encryption.py KEY-ID`."
            )
        try:
            secret = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
        except binascii.Error:
            secret = b""
        if len(secret) != KEY_BYTES:
            raise ValueError(
                f"{KEYS_VARIABLE} key {key_id!r} is not {KEY_BYTES} base64-encoded bytes; "
                "make one with `uv run encryption.py KEY-ID`."
            )
        if any(key.key_id == key_id for key in keys):
            raise ValueError(
                f"{KEYS_VARIABLE} lists key id {key_id!r} twice; give each key its own id."
            )
        keys.append(EncryptionKey(key_id, secret))
    return keys


class AesGcmCodec(PayloadCodec):
    """Encrypts every payload with AES-256-GCM under the first key; decrypts with any key.

    The key id travels in the payload metadata (and is authenticated), so payloads written
    before a rotation still decode. The nonce is an HMAC of the plaintext (a synthetic nonce):
    the same payload always encrypts to the same bytes, so identical values still share one
    content-addressed Redis key. That reveals only that two payloads are equal, which the
    content-addressed key reveals anyway. Payloads without this codec's encoding pass through.
    """

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        # Without keys it encrypts nothing, but still names the key an encrypted payload needs.
        self._current = keys[0].key_id if keys else None
        self._ciphers: dict[str, tuple[AESGCM, bytes]] = {}
        for key in keys:
            if len(key.secret) != KEY_BYTES:
                raise ValueError(f"Encryption key {key.key_id!r} must be {KEY_BYTES} bytes.")
            # Separate subkeys for encryption and nonce derivation, from the one secret.
            derived = HKDF(hashes.SHA256(), 2 * KEY_BYTES, None, b"temporal-payload-aes-gcm")
            material = derived.derive(key.secret)
            self._ciphers[key.key_id] = (AESGCM(material[:KEY_BYTES]), material[KEY_BYTES:])

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self._current is None:
            return list(payloads)
        return [self._encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(payload) for payload in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        assert self._current is not None
        cipher, nonce_key = self._ciphers[self._current]
        plaintext = payload.SerializeToString(deterministic=True)
        nonce = hmac.new(nonce_key, plaintext, hashlib.sha256).digest()[:NONCE_BYTES]
        ciphertext = cipher.encrypt(nonce, plaintext, self._current.encode())
        return Payload(
            metadata={"encoding": ENCRYPTED_ENCODING, KEY_ID_METADATA: self._current.encode()},
            data=nonce + ciphertext,
        )

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCRYPTED_ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        if key_id not in self._ciphers:
            raise ApplicationError(
                f"A payload was encrypted with key {key_id!r}, which is not in this process's "
                f"{KEYS_VARIABLE}; set it there (after the current key) to read it.",
                type="PayloadEncryptionKeyUnknown",
                non_retryable=True,
            )
        cipher, _ = self._ciphers[key_id]
        data = payload.data
        try:
            plaintext = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise ApplicationError(
                f"A payload encrypted with key {key_id!r} failed authentication; it was "
                "changed after it was written, or the key with that id is not the one that "
                "encrypted it.",
                type="PayloadDecryptionError",
                non_retryable=True,
            ) from None
        decrypted = Payload()
        decrypted.ParseFromString(plaintext)
        return decrypted


def new_key_entry(key_id: str) -> str:
    """A fresh ``key-id:base64-key`` entry for ``PAYLOAD_ENCRYPTION_KEYS``."""
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError(
            f"{key_id!r} is not a key id: use 1 to 64 letters, digits, '.', '_' or '-'."
        )
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


if __name__ == "__main__":
    try:
        print(new_key_entry(sys.argv[1] if len(sys.argv) > 1 else "k1"))
    except ValueError as err:
        sys.exit(f"encryption: {err}")
