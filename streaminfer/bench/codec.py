"""Micro-benchmark of the codec hot path: encode + decode of a typical request."""

from __future__ import annotations

import logging
import time
import uuid

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import InferenceRequest, Tensor

logger = logging.getLogger(__name__)


def typical_request() -> InferenceRequest:
    """A text-embedding request as the gateway publishes it: one text, a traceparent."""
    return InferenceRequest(
        request_id=str(uuid.uuid4()),
        task="text-embedding",
        inputs=[Tensor("text", "BYTES", [1], [b"The quick brown fox jumps over the lazy dog."])],
        client_id="client-1",
        trace={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )


def codec_roundtrips_per_second(n: int = 20000, codec: AvroCodec | None = None) -> float:
    """Encode-then-decode round trips per second of `typical_request()`, single-object."""
    codec = codec or AvroCodec()
    request = typical_request()
    encode, decode = codec.encode, codec.decode
    for _ in range(min(n, 1000)):  # warm caches before timing
        decode(encode(request), InferenceRequest)
    started = time.perf_counter()
    for _ in range(n):
        decode(encode(request), InferenceRequest)
    elapsed = time.perf_counter() - started
    return n / elapsed


if __name__ == "__main__":
    print(f"{codec_roundtrips_per_second():,.0f} encode+decode round trips/s")
