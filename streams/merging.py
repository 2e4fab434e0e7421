"""Pure functions that merge the tensors of several requests into one batch and split the
model's outputs back into one set per request, in order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def merge_inputs(requests: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate each named input along the first (batch) dimension."""
    if not requests:
        raise ValueError("nothing to merge")
    names = requests[0].keys()
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in names}


def shape_groups(requests: Sequence[dict[str, np.ndarray]]) -> list[list[int]]:
    """Indices of ``requests`` grouped so that each group's inputs concatenate: the same names,
    and per name the same dtype and shape past the batch dimension (images sent at their own
    size, as face-detect takes them, differ there). First-seen order, within and across groups."""
    groups: dict[tuple, list[int]] = {}
    for index, inputs in enumerate(requests):
        signature = tuple(
            (name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items())
        )
        groups.setdefault(signature, []).append(index)
    return list(groups.values())


def split_outputs(
    outputs: dict[str, np.ndarray], sizes: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Slice every output back into ``len(sizes)`` parts of the given first-dimension sizes."""
    total = sum(sizes)
    for name, array in outputs.items():
        if array.shape[:1] != (total,):
            raise ValueError(
                f"output {name!r} has first dimension {array.shape[:1]}, expected {total}"
            )
    bounds = np.cumsum([0, *sizes])
    return [
        {name: array[start:stop] for name, array in outputs.items()}
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]
