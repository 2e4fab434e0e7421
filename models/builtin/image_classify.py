"""Build ``image-classify``: a small CNN trained on scikit-learn's digits, saved as TorchScript."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from streaminfer.models.builtin.datasets import SEED, digits_split
from streaminfer.models.errors import ModelBuildFailed

__all__ = ["ARTIFACT", "MIN_ACCURACY", "TASK", "DigitsCNN", "build"]

logger = logging.getLogger(__name__)

TASK = "image-classify"
# What building needs beyond the runtime: module -> the command that installs it
REQUIRES = {
    "sklearn": "pip install 'streaminfer[build]'",
}
ARTIFACT = "model.pt"
MIN_ACCURACY = 0.95
EPOCHS = 40
BATCH_SIZE = 32
PIXEL_MAX = 16.0  # the digits data set's scale


class DigitsCNN(nn.Module):
    """Logits for ``[N, 8, 8]`` images on the 0..16 scale."""

    def __init__(self) -> None:
        super().__init__()
        self.pixel_max = PIXEL_MAX
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((pixels / self.pixel_max).unsqueeze(1)))


class DigitsClassifier(nn.Module):
    """The served module: ``pixels [N, 8, 8]`` -> ``(label [N] int64, probabilities [N, 10])``."""

    def __init__(self, network: DigitsCNN) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.network(pixels), dim=1)
        return probabilities.argmax(dim=1), probabilities


def _shifted(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly shift each image by up to one pixel, zero-filled: cheap, honest augmentation."""
    padded = nn.functional.pad(images, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (images.shape[0], 2), generator=generator)
    return torch.stack(
        [padded[i, dy : dy + 8, dx : dx + 8] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def train(x_train: np.ndarray, y_train: np.ndarray, epochs: int = EPOCHS) -> DigitsCNN:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    network = DigitsCNN()
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    network.train()
    for _ in tqdm(range(epochs), desc="image-classify: training", unit="epoch", leave=False):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(
                network(_shifted(images[batch], generator)), labels[batch]
            )
            loss.backward()
            optimizer.step()
        schedule.step()
    return network.eval()


def build(version_dir: Path) -> dict:
    """Train, script and save the classifier into ``version_dir``; returns held-out metrics."""
    split = digits_split()
    network = train(split.x_train, split.y_train)
    artifact = version_dir / ARTIFACT
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but is the artifact format SPEC section 2 asks for.
        warnings.filterwarnings("ignore", r".*torch\.jit", DeprecationWarning)
        torch.jit.script(DigitsClassifier(network)).save(str(artifact))
        # Score the saved artifact itself, not the in-memory network.
        served = torch.jit.load(str(artifact))
    with torch.inference_mode():
        labels, probabilities = served(torch.from_numpy(split.x_test))
    accuracy = float((labels.numpy() == split.y_test).mean())
    logger.info("image-classify: held-out accuracy %.4f", accuracy)
    if accuracy < MIN_ACCURACY:
        raise ModelBuildFailed(f"digits CNN held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}")
    if not np.allclose(probabilities.sum(dim=1).numpy(), 1.0, atol=1e-5):
        raise ModelBuildFailed("digits CNN probabilities do not sum to 1")
    return {
        "data_set": "sklearn.datasets.load_digits",
        "accuracy": round(accuracy, 4),
        "n_train": len(split.y_train),
        "n_test": len(split.y_test),
        "epochs": EPOCHS,
    }
