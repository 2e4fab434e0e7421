"""Build ``tabular-classify``: logistic regression on breast-cancer data, exported to ONNX.

scikit-learn fits a standardiser and a logistic regression; their parameters are copied into a
tiny torch module (so standardisation lives inside the graph) and exported with torch.onnx.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from streaminfer.models.builtin.datasets import SEED, breast_cancer_split
from streaminfer.models.errors import ModelBuildFailed

__all__ = ["ARTIFACT", "MIN_ACCURACY", "TASK", "LogisticModel", "build"]

logger = logging.getLogger(__name__)

TASK = "tabular-classify"
# What building needs beyond the runtime: module -> the command that installs it
REQUIRES = {
    "sklearn": "pip install 'streaminfer[build]'",
    "onnx": "pip install 'streaminfer[build]'",
    "onnxscript": "pip install 'streaminfer[build]'",
}
ARTIFACT = "model.onnx"
MIN_ACCURACY = 0.93
FEATURE_TABLE = "features.sqlite"
"""The example feature table (docs/features.md): every row of the data set, ids "0".."568"."""


class LogisticModel(nn.Module):
    """``features [N, 30]`` -> ``(label [N] int64, probability [N] of label 1)``."""

    def __init__(self, mean, scale, coef, intercept) -> None:
        super().__init__()
        for name, value in (("mean", mean), ("scale", scale), ("coef", coef)):
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=torch.float32))
        self.register_buffer("intercept", torch.tensor(float(intercept), dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = ((features - self.mean) / self.scale) @ self.coef + self.intercept
        probability = torch.sigmoid(logits)
        return (probability >= 0.5).to(torch.int64), probability


def build(version_dir: Path) -> dict:
    """Fit, export and verify the model into ``version_dir``; returns held-out metrics."""
    import onnxruntime as ort
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from streaminfer.models.builtin.onnx_export import export_onnx

    split = breast_cancer_split()
    pipeline = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=SEED)
    )
    pipeline.fit(split.x_train.astype(np.float64), split.y_train)
    scaler, regression = pipeline[0], pipeline[1]
    module = LogisticModel(
        scaler.mean_, scaler.scale_, regression.coef_[0], regression.intercept_[0]
    )

    artifact = version_dir / ARTIFACT
    export_onnx(
        module,
        (torch.from_numpy(split.x_train[:2]),),
        artifact,
        input_names=["features"],
        output_names=["label", "probability"],
        dynamic_dims={"features": {0: "batch"}},
    )

    # Score the exported graph itself and check it agrees with scikit-learn.
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    labels, probability = session.run(["label", "probability"], {"features": split.x_test})
    accuracy = float((labels == split.y_test).mean())
    expected = pipeline.predict_proba(split.x_test.astype(np.float64))[:, 1]
    max_difference = float(np.abs(probability - expected).max())
    logger.info("tabular-classify: held-out accuracy %.4f", accuracy)
    if accuracy < MIN_ACCURACY:
        raise ModelBuildFailed(f"breast-cancer held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}")
    if max_difference > 1e-4:
        raise ModelBuildFailed(f"ONNX and scikit-learn disagree by {max_difference}")
    rows = build_feature_table(version_dir / FEATURE_TABLE)
    return {
        "feature_table_rows": rows,
        "data_set": "sklearn.datasets.load_breast_cancer",
        "accuracy": round(accuracy, 4),
        "n_train": len(split.y_train),
        "n_test": len(split.y_test),
        "max_probability_difference_vs_sklearn": max_difference,
    }


def build_feature_table(path: Path, table: str = "features", key_column: str = "entity_id") -> int:
    """The data set's rows as a SQLite table keyed by row number ("0".."568"), one REAL column
    per feature named as ``feature_names`` (the template's named_features); returns the rows."""
    import sqlalchemy as sa
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [str(name) for name in data.feature_names]
    metadata = sa.MetaData()
    features = sa.Table(
        table,
        metadata,
        sa.Column(key_column, sa.Text, primary_key=True),
        *(sa.Column(name, sa.Float) for name in names),
    )
    path.unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            metadata.create_all(connection)
            connection.execute(
                features.insert(),
                [
                    {key_column: str(index), **dict(zip(names, map(float, row), strict=True))}
                    for index, row in enumerate(data.data)
                ],
            )
    finally:
        engine.dispose()
    return len(data.data)
