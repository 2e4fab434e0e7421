"""Export a torch module to a single-file ONNX model whose graph outputs carry exact names."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

__all__ = ["export_onnx"]

logger = logging.getLogger(__name__)


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_dims: dict[str, dict[int, str]],
) -> None:
    """Export with the torch.export-based exporter; ``dynamic_dims`` maps input -> {axis: name}.

    Example inputs need size >= 2 on every dynamic axis (torch.export specialises 0 and 1).
    """
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = {
        name: {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in axes.items()}
        for name, axes in dynamic_dims.items()
    }
    # NOTE: the exporter names intermediate values after the aten op that made them, so an output
    # called "embedding" would collide with aten.embedding's result. Export under placeholder
    # names and rename afterwards.
    placeholders = [f"__output_{index}" for index in range(len(output_names))]
    with warnings.catch_warnings():
        # Sharing one Dim across inputs is deliberate; the exporter warns about it, and about
        # its own use of deprecated pytree APIs.
        warnings.filterwarnings("ignore", r".*axis name", UserWarning)
        warnings.filterwarnings("ignore", r".*LeafSpec", FutureWarning)
        program = torch.onnx.export(
            module.eval(),
            example_inputs,
            input_names=list(input_names),
            output_names=placeholders,
            dynamic_shapes={name: dynamic_shapes.get(name, {}) for name in input_names},
            dynamo=True,
            external_data=False,
        )
    model = program.model_proto
    _rename_values(model, dict(zip(placeholders, output_names, strict=True)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    logger.debug("exported %s (%d bytes)", path, path.stat().st_size)


def _rename_values(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    graph = model.graph
    taken = set(renames.values())
    # First move any intermediate value out of the way of a wanted output name.
    clashes = {name: f"{name}__internal" for name in taken}
    for mapping in (clashes, renames):
        for node in graph.node:
            node.input[:] = [mapping.get(name, name) for name in node.input]
            node.output[:] = [mapping.get(name, name) for name in node.output]
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.name in mapping:
                value.name = mapping[value.name]
        for initializer in graph.initializer:
            if initializer.name in mapping:
                initializer.name = mapping[initializer.name]
