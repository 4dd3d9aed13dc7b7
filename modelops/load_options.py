"""How to load a model artifact, as one typed value passed down explicitly.

A script builds a :class:`LoadOptions` once from its flags (:func:`modelops.cli.load_options`) and hands it to
:func:`modelops.artifact.load_artifact`, :class:`modelops.model_session.ModelSession`,
:func:`modelops.model_process.start_session` and :func:`modelops.model_process.time_artifacts`; nothing is kept in
module globals, so a spawned worker, a test or a second script in the same process loads exactly what it was
given. The value is frozen and picklable: a spawned worker receives it as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoadOptions:
    """Everything a loader may be told besides the file.

    Args:
        device: ``cpu`` or ``cuda`` (ONNX files run on CPU here) (default: cpu).
        threads: intra-op threads of torch and the ONNX runtimes (default: None, all usable cores where the
            caller sets torch's, each runtime's own default otherwise).
        trust_pickle: allow whole pickled modules, which runs the code they hold (default: False).
        compile: force torch.compile on or off (default: None, the manifest's ``runtime.compile``).
        arch: the torchvision architecture of a bare state_dict (default: None, identified from its parameter
            names and shapes).
        image_size: the input side tried first on a model file that does not declare its input (default: None,
            the usual sides only).
        ort_session_config: extra ONNX Runtime session config entries, e.g.
            ``{"session.intra_op.allow_spinning": "0"}`` (default: None).
    """

    device: str = "cpu"
    threads: int | None = None
    trust_pickle: bool = False
    compile: bool | None = None
    arch: str | None = None
    image_size: int | None = None
    # Left out of the hash: a dict has none, and two options differing only here are rarely told apart by hash.
    ort_session_config: Mapping[str, str] | None = field(default=None, hash=False)
