"""Int8 quantization engines that run real int8 kernels on x86 CPUs.

- :mod:`.backends`: the backend registry (names, artifact formats, quantizer classes).
- :mod:`.config`: :class:`QuantConfig`, one trial's settings.
- :mod:`.settings`: :class:`~.settings.TrialSettings`, what every trial of a run reads besides its config.
- :mod:`.onnxruntime_backend`, :mod:`.pt2e_backend`: the engines.
- :mod:`.coverage`: MACs per layer and the share int8 carries; :mod:`.detect`: is a file already int8?
"""

from PR3_model_optimization.quantization.backends import (
    REGISTRY,
    Backend,
    backend_names,
    register_backend,
    unregister_backend,
)
from PR3_model_optimization.quantization.config import (
    ACTIVATION_TYPES,
    CALIBRATION_METHODS,
    METHODS,
    QuantConfig,
    check_choice,
)
from PR3_model_optimization.quantization.coverage import dynamic_coverage, layer_macs, mac_fraction, sensitive_layers
from PR3_model_optimization.quantization.detect import quantized_reason

__all__ = [
    "ACTIVATION_TYPES", "CALIBRATION_METHODS", "METHODS", "REGISTRY", "Backend", "QuantConfig", "backend_names",
    "check_choice", "dynamic_coverage", "layer_macs", "mac_fraction", "quantized_reason", "register_backend",
    "sensitive_layers", "unregister_backend",
]
