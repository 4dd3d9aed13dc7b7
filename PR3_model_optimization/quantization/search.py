"""Which configurations a quantization run tries, and which trial it keeps."""

from __future__ import annotations

from collections.abc import Sequence

from modelops.errors import UsageError
from modelops.selection import pick_best as select_best
from PR3_model_optimization.quantization.auto import AUTO, Candidate, auto_candidates, unavailable_candidates
from PR3_model_optimization.quantization.backends import REGISTRY, backend_names, backends_for
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.settings import TrialSettings


def search_space(base: QuantConfig, sensitive: Sequence[str], backends: Sequence[str]) -> list[QuantConfig]:
    """The configurations the accuracy-aware search tries, the user's own first, then each backend's trials
    (:attr:`~PR3_model_optimization.quantization.backends.Backend.trials`) in registry order."""
    trials = [base]
    for name in backend_names():
        if name in backends:
            backend = REGISTRY[name]
            trials += backend.trials(backend.config_from(base), sensitive)
    allowed = [t for t in trials if t.backend in backends]
    return list(dict.fromkeys(allowed))  # QuantConfig is frozen, hence hashable: drop repeats, keep order


def plan_trials(base: QuantConfig, sensitive: Sequence[str], settings: TrialSettings, auto: bool,
                searching: bool, start: str = "eager", form: str | None = None,
                ) -> tuple[list[QuantConfig], list[Candidate]]:
    """The configurations to try and, for ``auto``, the candidates that cannot run here (with why).

    ``start`` is what the quantizers start from (``eager``, ``onnx``, ``exported_program``) and ``form`` names the
    input's form in messages: only backends that start from it run; auto notes the others as skipped.
    """
    if settings.backend and settings.backend != AUTO:
        backends: Sequence[str] = [settings.backend]
    else:
        backends = backends_for(base.method)
    refused = [b for b in backends if start not in REGISTRY[b].starts_from]
    takers = [b for b in backend_names() if start in REGISTRY[b].starts_from]
    if refused and not auto:
        raise UsageError(f"--backend {refused[0]} does not start from {form or start} files: use --backend "
                         f"{' or '.join(takers)}, or quantize the model's state_dict (with --arch)")
    backends = [b for b in backends if b not in refused]
    note = f"skipped: this backend does not start from {form or start} files"
    skipped_for_form = [Candidate(c, error=note) for c in auto_candidates(base, refused)] if auto else []
    configs = search_space(base, sensitive, backends) if searching else \
        auto_candidates(base, backends) if auto else [base]
    if settings.max_trials:
        configs = configs[: settings.max_trials]
    if auto:
        runnable, skipped = unavailable_candidates(configs)
        return runnable, skipped + skipped_for_form
    reason = REGISTRY[base.backend].unavailable_reason()
    if reason:
        raise UsageError(f"--backend {base.backend} cannot run here: {reason}; or use --backend auto")
    return configs, []


def pick_best(rows: Sequence[dict]) -> dict | None:
    """The fastest trial that met the accuracy budget; if none did, the most accurate one.

    Rows carry ``meets_budget``, ``speedup_x`` and ``val_top1_pct``; rows with an ``error`` never win. The rule is
    :func:`modelops.selection.pick_best`, shared with the pipeline and the main job.
    """
    return select_best(rows, speed="speedup_x", accuracy="val_top1_pct", meets_budget=lambda r: r["meets_budget"])
