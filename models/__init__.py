"""Model repository and runtimes: ``model.yaml`` configs, the ``Model`` interface, an ONNX Runtime
and a TorchScript runtime, friendly-JSON mapping, and the built-in model builders.

Importing this package is cheap: torch and onnxruntime load only with the runtime modules.
"""
