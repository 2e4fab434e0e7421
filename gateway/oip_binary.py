"""The gateway's side of the binary tensor data extension of the Open Inference Protocol (the
wire format is :mod:`streaminfer.schemas.oip_binary`): a request's binary inputs become the JSON
``data`` the rest of the gateway validates, and outputs asked as binary are answered so."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import Response

from streaminfer.models.signature import NUMPY_DTYPES
from streaminfer.schemas import oip_binary as wire
from streaminfer.schemas.oip_binary import HEADER, MEDIA_TYPE

from .errors import InvalidRequest

__all__ = ["HEADER", "MEDIA_TYPE", "binary_response", "raw_bytes", "split_request"]


def split_request(body: bytes, header_length: str) -> Any:
    """The request's JSON header, each binary input's ``data`` filled in from the bytes after it.
    A body that does not frame is a 400; an input whose bytes are wrong a 422."""
    try:
        header, tensors = wire.split(body, header_length, "inputs")
        for tensor, raw in tensors:
            if raw is None:
                continue
            name = tensor.get("name")
            if "data" in tensor:
                raise InvalidRequest(
                    f"input {name!r} has both data and parameters.binary_data_size"
                )
            tensor["data"] = _values(name, str(tensor.get("datatype", "")).upper(), raw)
    except wire.FramingError as exc:
        raise InvalidRequest(str(exc), status=400, details=exc.details) from None
    except wire.TensorBytesError as exc:
        raise InvalidRequest(str(exc)) from None
    return header


def _values(name: Any, datatype: str, raw: bytes) -> list:
    """Raw tensor bytes as the flat JSON ``data`` the rest of the gateway validates."""
    label = f"input {name!r}"
    if datatype == "BYTES":
        return [_text(name, item) for item in wire.unpack_bytes(raw, label)]
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidRequest(
            f"input {name!r}: unknown datatype {datatype!r}",
            details={"allowed": sorted(NUMPY_DTYPES)},
        )
    return wire.fixed_values(raw, dtype, label, datatype).tolist()


def _text(name: Any, item: bytes) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"input {name!r}: BYTES elements must be UTF-8 text") from exc


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """An output tensor as binary data."""
    if datatype == "BYTES":
        return wire.pack_bytes(
            i if isinstance(i, bytes) else str(i).encode() for i in array.ravel().tolist()
        )
    return wire.fixed_bytes(array)


def binary_response(
    header: dict, chunks: list[bytes], headers: dict[str, str] | None = None
) -> Response:
    """The JSON header, then the binary outputs' bytes in the order of ``header["outputs"]``."""
    body, length = wire.frame(header, chunks)
    return Response(body, media_type=MEDIA_TYPE, headers={**(headers or {}), HEADER: str(length)})
