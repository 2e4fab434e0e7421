"""Turn contract input tensors into the feeds a backend graph expects, as ``preprocess:`` declares.

Kinds: ``none`` passes the contract tensors through by name; ``tokenize`` runs a Hugging Face
``tokenizers`` tokenizer (``tokenizer.json`` from the version directory) over a BYTES input and
pads to the longest text of each batch, yielding ``input_ids``, ``attention_mask`` and
``token_type_ids`` (int64).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from streaminfer.models.config import ModelConfig
from streaminfer.models.errors import InvalidInput, ModelConfigError
from streaminfer.models.signature import NUMPY_DTYPES

__all__ = ["PassThrough", "Preprocessor", "TextTokenizer", "build_preprocessor"]

logger = logging.getLogger(__name__)

TOKENIZER_FEEDS = ("input_ids", "attention_mask", "token_type_ids")


class Preprocessor(Protocol):
    """Callable from contract tensors to backend feeds; ``feed_names`` in positional order."""

    feed_names: tuple[str, ...]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class PassThrough:
    """Feeds are the contract inputs themselves, in ``model.yaml`` order."""

    def __init__(self, config: ModelConfig) -> None:
        self._dtypes = {spec.name: NUMPY_DTYPES[spec.datatype] for spec in config.inputs}
        self.feed_names = tuple(self._dtypes)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: np.ascontiguousarray(inputs[name], dtype=dtype)
            for name, dtype in self._dtypes.items()
        }


class TextTokenizer:
    """Tokenise one text input per item; padding is per batch, truncation at ``max_length``.

    Thread-safe: the tokenizer is configured once here and only read by ``encode_batch``.
    """

    def __init__(
        self,
        tokenizer_file: Path,
        text_input: str,
        max_length: int,
        feed_names: tuple[str, ...] = TOKENIZER_FEEDS,
    ) -> None:
        from tokenizers import Tokenizer  # lazily: only text models need it

        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad or missing file
            raise ModelConfigError(f"cannot load tokenizer {tokenizer_file}: {exc}") from exc
        unknown = sorted(set(feed_names) - set(TOKENIZER_FEEDS))
        if unknown:
            raise ModelConfigError(f"preprocess.feeds {unknown} not in {list(TOKENIZER_FEEDS)}")
        padding = self._tokenizer.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = padding.get("pad_id", self._tokenizer.token_to_id(pad_token) or 0)
        # NOTE: tokenizer.json files often pin padding to a fixed length (128 for MiniLM);
        # re-enabling without `length` pads to the longest text of each batch instead.
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self._tokenizer.enable_truncation(max_length=max_length)
        self._text_input = text_input
        self.feed_names = tuple(feed_names)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [_as_text(item) for item in np.asarray(inputs[self._text_input]).reshape(-1)]
        encodings = self._tokenizer.encode_batch(texts)
        columns = {
            "input_ids": [encoding.ids for encoding in encodings],
            "attention_mask": [encoding.attention_mask for encoding in encodings],
            "token_type_ids": [encoding.type_ids for encoding in encodings],
        }
        return {name: np.asarray(columns[name], dtype=np.int64) for name in self.feed_names}


def _as_text(item: object) -> str:
    if isinstance(item, bytes | np.bytes_):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput("text is not valid UTF-8") from exc
    return str(item)


def build_preprocessor(config: ModelConfig, version_dir: Path) -> Preprocessor:
    """The preprocessor ``config.preprocess`` declares, reading its files from ``version_dir``."""
    spec = config.preprocess or {"kind": "none"}
    if spec.get("kind", "none") == "none":
        return PassThrough(config)
    return TextTokenizer(
        Path(version_dir) / spec["tokenizer"],
        text_input=spec["input"],
        max_length=spec["max_length"],
        feed_names=tuple(spec.get("feeds", TOKENIZER_FEEDS)),
    )
