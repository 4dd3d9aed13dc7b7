"""An outside timer: one model, alone in a fresh process, timed with ``time.perf_counter()`` around each call.

    python PR4_model_benchmarking/benchmarks/plain_loop.py MODEL BATCH_SIZE SAMPLES WARMUP THREADS

Imports nothing from this project, only the runtime (torch + torchvision, or onnxruntime) and the standard
library, and keeps each runtime's default threading apart from the intra-op thread count; prints one JSON
line with the per-call milliseconds. ``check_outside_timer.py`` compares its ratios with the project's.
A ``.onnx`` file runs in ONNX Runtime; anything else is a torchvision ``state_dict`` artifact (``arch`` and
``num_classes`` read from the manifest JSON beside it, as the artifact format stores them).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def load_model(path: Path, threads: int):
    """A callable on a float32 numpy batch, with the runtime's default settings apart from ``threads``."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})
    import torch
    import torchvision

    torch.set_num_threads(threads)
    manifest = json.loads(Path(f"{path}.json").read_text())
    model = getattr(torchvision.models, manifest["arch"])(num_classes=manifest["num_classes"])
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved.get("state_dict", saved))
    model.eval()

    def run(batch):
        with torch.inference_mode():
            return model(torch.from_numpy(batch))

    return run


def main(argv: list[str]) -> dict:
    path, batch_size, samples, warmup, threads = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    import numpy as np

    shape = json.loads(Path(f"{path}.json").read_text())["input_shape"]
    batch = np.random.default_rng(batch_size).standard_normal((batch_size, *shape), dtype=np.float32)
    model = load_model(path, threads)
    for _ in range(warmup):
        model(batch)
    times_ms = []
    for _ in range(samples):
        start = time.perf_counter()
        model(batch)
        times_ms.append((time.perf_counter() - start) * 1e3)
    return {"model": str(path), "batch_size": batch_size, "times_ms": times_ms}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
