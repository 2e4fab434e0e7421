"""Deterministic, stratified train/test splits of scikit-learn's bundled data sets."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["SEED", "Split", "breast_cancer_split", "digits_split"]

SEED = 0
TEST_FRACTION = 0.25


class Split(NamedTuple):
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    from sklearn.model_selection import train_test_split

    parts = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y)
    return Split(*parts)


def digits_split() -> Split:
    """8x8 digit images (values 0..16) as float32 ``[N, 8, 8]``, labels int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return _split(data.images.astype(np.float32), data.target.astype(np.int64))


def breast_cancer_split() -> Split:
    """30 features in ``feature_names`` order as float32 ``[N, 30]``, targets int64 (1 benign)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return _split(data.data.astype(np.float32), data.target.astype(np.int64))


def breast_cancer_feature_names() -> list[str]:
    from sklearn.datasets import load_breast_cancer

    return [str(name) for name in load_breast_cancer().feature_names]
