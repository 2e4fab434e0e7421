"""``streaminfer bench``: throughput and latency of text-embedding through Kafka and the gateway,
beside the raw ONNX Runtime model, measured side by side in one run.

Modules: ``figures`` (percentiles, tables), ``raw`` (the model alone), ``stack`` (worker and
gateway processes for a run), ``kafka_load`` (an upstream producer and downstream consumer),
``run`` (the scenarios and the report).
"""

from .run import run_bench

__all__ = ["run_bench"]
