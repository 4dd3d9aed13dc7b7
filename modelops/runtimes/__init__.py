"""Runtimes the shared loader can run an artifact on besides torch and ONNX Runtime."""
