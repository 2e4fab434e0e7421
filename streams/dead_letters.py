"""Dead letters that always fit the producer's limit: past it, the payload keeps its head, and
the letter says so (``truncated``) with the original's length and SHA-256."""

from __future__ import annotations

import dataclasses
import hashlib

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import DeadLetter

# Longest error message kept: a message quoting hostile input must not make the letter huge.
MAX_MESSAGE_CHARS = 2000
# Room left for what the estimate does not count (record batch framing, headers' varints).
_SLACK_BYTES = 512


def fit_dead_letter(
    letter: DeadLetter,
    codec: AvroCodec,
    max_bytes: int,
    headers: list[tuple[str, bytes]] | None = None,
) -> DeadLetter:
    """``letter`` with its length and digest filled in, cut to at most ``max_bytes`` on the wire
    (the payload first, then, if the key alone is too large, the key)."""
    original = letter.payload if not letter.truncated else None
    if original is not None:
        letter = dataclasses.replace(
            letter,
            payload_length=len(original),
            payload_sha256=hashlib.sha256(original).hexdigest(),
        )
    if len(letter.error_message) > MAX_MESSAGE_CHARS:
        letter = dataclasses.replace(
            letter, error_message=letter.error_message[:MAX_MESSAGE_CHARS] + "…"
        )
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        letter.key, codec.encode(letter), headers or []
    )
    excess = size + _SLACK_BYTES - max_bytes
    if excess <= 0:
        return letter
    keep = max(0, len(letter.payload) - excess)
    excess -= len(letter.payload) - keep
    key = letter.key
    if excess > 0 and key:  # a key near the limit by itself: keep its head too
        key = key[: max(0, len(key) - excess)]
    return dataclasses.replace(letter, payload=letter.payload[:keep], key=key, truncated=True)
