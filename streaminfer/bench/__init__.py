"""``streaminfer bench``: throughput and latency of text-embedding through Kafka and the gateway,
beside the raw ONNX Runtime model, measured side by side in one run.

Modules: ``figures`` (percentiles, tables, load points), ``codec`` (the Avro codec alone),
``raw`` (the model alone), ``stack`` (worker and
gateway processes for a run), ``kafka_load`` (an upstream producer and downstream consumer, in a
closed or an open loop), ``load`` (latency against offered load) and ``plot`` (its PNG),
``scaleout`` (workers and partitions), ``http_load`` (a gateway process and HTTP clients, on the
keep-alive load generator of ``http_client``), ``run`` (the scenarios and the report).
"""

from .run import run_bench

__all__ = ["run_bench"]
