"""The inference worker's parts: the batching loop, inference, retries and dead letters, callbacks, health and
metrics. The entry point is ``PR2_async_inference/model_worker.py``."""
