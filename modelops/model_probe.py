"""Facts about a model file that has no manifest: its input shape and class count.

ONNX and ExportedProgram files declare their input shape; TorchScript does not, so the usual sides are
tried. The class count is read from one forward pass on zeros, which every format can run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from modelops.errors import ArtifactError

logger = logging.getLogger(__name__)

# Sides tried on a model that does not declare its input, after the caller's: ImageNet's, the small datasets'.
CANDIDATE_SIDES = (224, 32)


def onnx_input_shape(session: object) -> list[int] | None:
    """(C, H, W) of an ONNX Runtime session's first input, when the file fixes it."""
    dims = list(session.get_inputs()[0].shape)[1:]  # type: ignore[attr-defined]
    return [int(d) for d in dims] if dims and all(isinstance(d, int) and d > 0 for d in dims) else None


def exported_user_input_shape(exported: torch.export.ExportedProgram) -> Sequence[object] | None:
    """The full shape of an ExportedProgram's first user input, batch dimension included, symbolic sizes
    (``torch.SymInt``) as they are; None when the program has no user input or its value has no shape."""
    user_inputs = set(exported.graph_signature.user_inputs)
    for node in exported.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            return getattr(node.meta.get("val"), "shape", None)
    return None


def exported_input_shape(exported: torch.export.ExportedProgram) -> list[int] | None:
    """(C, H, W) of an ExportedProgram's first user input, when it is static past the batch dimension."""
    dims = list(exported_user_input_shape(exported) or [])[1:]
    try:
        return [int(d) for d in dims] or None
    except TypeError:  # a symbolic size that has no single value
        return None


def probe(
    fn: Callable[[torch.Tensor], torch.Tensor], source: object, input_shape: Sequence[int] | None = None,
    side: int | None = None,
) -> tuple[list[int], int]:
    """The input shape ``fn`` accepts and the class count it predicts, from one forward pass on zeros.

    Args:
        fn: the model's forward (any format).
        source: what to name in messages (the file).
        input_shape: the shape the file declares; without it, 3 x side x side is tried for ``side``, then each
            of :data:`CANDIDATE_SIDES`.
        side: the input side to try first (a script's ``--image-size``; default: None, the candidates only).
    """
    sides = dict.fromkeys([side, *CANDIDATE_SIDES]) if side else CANDIDATE_SIDES
    shapes = [list(input_shape)] if input_shape else [[3, s, s] for s in sides if s]
    last_error = ""
    for shape in shapes:
        try:
            with torch.inference_mode():
                out = fn(torch.zeros(1, *shape))
        except Exception as exc:  # a wrong input shape surfaces as whatever the first mismatched op raises
            last_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            continue
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ArtifactError(f"{source} does not output logits of shape (N, classes): got "
                                f"{getattr(out, 'shape', type(out).__name__)}")
        logger.info("%s has no manifest; it takes input %s and predicts %d classes", source, shape, out.shape[1])
        return shape, int(out.shape[1])
    tried = " or ".join(f"(1, {', '.join(map(str, s))})" for s in shapes)
    raise ArtifactError(f"{source} has no manifest and does not run on an input of shape {tried} ({last_error}); "
                        "write a manifest beside it with its input_shape and num_classes")
