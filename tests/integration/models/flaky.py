"""A test-only TorchScript model that fails on command, to prove retries and failure isolation on
a real worker: an item whose first value is 13 always breaks the model (a poison input); one whose
first value is 7 fails twice, then works (a transient failure); one whose first value is 5 takes
a while (it holds the one instance, so the requests sent next queue into one batch). Otherwise
it doubles its input."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import yaml

POISON = 13.0
TRANSIENT = 7.0
SLOW = 5.0

CONFIG = {
    "task": "flaky",
    "name": "flaky-doubler",
    "backend": "torch",
    "max_batch_size": 16,
    "max_batch_delay_ms": 300,
    "instances": 1,
    "device": "cpu",
    "warmup": True,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
}


class Flaky(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transient_calls = 0
        self.poison = POISON  # TorchScript reads module attributes, not globals
        self.transient = TRANSIENT
        self.slow = SLOW

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] == self.poison).any()):
            raise RuntimeError("poison input: this item always breaks the model")
        if bool((x[:, 0] == self.transient).any()):
            self.transient_calls += 1
            if self.transient_calls % 3 != 0:
                raise RuntimeError("transient failure: try again")
        if bool((x[:, 0] == self.slow).any()):
            work = torch.ones(256, 256)
            for _ in range(800):  # about half a second of one core
                work = torch.tanh(torch.mm(work, work) / 256.0)
        return x * 2


def build(repo: Path) -> Path:
    """``<repo>/flaky/model.yaml`` and ``<repo>/flaky/1/model.pt``."""
    version = repo / "flaky" / "1"
    version.mkdir(parents=True)
    (repo / "flaky" / "model.yaml").write_text(yaml.safe_dump(CONFIG))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Flaky()).save(str(version / "model.pt"))
    return repo
