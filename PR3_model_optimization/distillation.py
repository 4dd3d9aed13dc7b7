"""Knowledge distillation building blocks, importable by any script that trains a student.

- :class:`DistillationLoss`: Hinton et al.'s soft-target loss,
  ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)``.
- :class:`HintStudent`: wraps a student so its penultimate features (the classifier's input) are also
  matched to the teacher's through a learned linear adapter (a FitNets-style hint on the last layer
  that every torchvision classifier has).
- :class:`IndexedDataset` + :class:`TeacherCache`: when the input pipeline is deterministic, run the
  teacher once per training sample instead of once per epoch (its forward pass dominates CPU cost).
- :func:`distillation_step`: the ``step_fn`` for :func:`modelops.training.fit`.

The pruning script reuses these for its ``--distill-from`` fine-tuning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modelops.errors import UsageError
from modelops.models import classifier_layer

logger = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class DistillationLoss(nn.Module):
    """Soft-target distillation loss plus hard-label cross-entropy.

    Args:
        temperature: softens both distributions; the KL term is scaled by ``T^2`` so its gradients keep
            the same magnitude as the temperature changes (Hinton et al., 2015). Default 4.0.
        alpha: weight of the soft (teacher) term; ``1 - alpha`` weights the cross-entropy with the labels.
            ``alpha=0`` is plain supervised training. Default 0.7.
        label_smoothing: label smoothing of the cross-entropy term. Default 0.0.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.7, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise UsageError(f"--temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise UsageError(f"--alpha must be within [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.label_smoothing = label_smoothing

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``T^2 * KL(p_teacher || p_student)`` at temperature T, averaged over the batch."""
        t = self.temperature
        log_student = F.log_softmax(student_logits.float() / t, dim=1)
        log_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
        return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * t * t

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        hard = F.cross_entropy(student_logits.float(), targets, label_smoothing=self.label_smoothing)
        if self.alpha == 0.0:
            return hard
        return self.alpha * self.soft_loss(student_logits, teacher_logits) + (1.0 - self.alpha) * hard


class _FeatureTap:
    """Records the input of a model's classifier layer (its penultimate features) on every forward."""

    def __init__(self, model: nn.Module) -> None:
        _, self.layer = classifier_layer(model)
        self.features: torch.Tensor | None = None
        self.handle = self.layer.register_forward_pre_hook(self._hook)

    def _hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.features = inputs[0]

    @property
    def dim(self) -> int:
        return self.layer.in_features

    def remove(self) -> None:
        self.handle.remove()


class HintStudent(nn.Module):
    """A student plus a linear adapter from its penultimate features to the teacher's.

    ``forward`` returns the student's logits (so evaluation and checkpoints work unchanged); the
    adapted features of the last call are in :attr:`hint`. Only :attr:`student` is saved at the end.
    """

    def __init__(self, student: nn.Module, teacher_dim: int) -> None:
        super().__init__()
        self.student = student
        self._tap = _FeatureTap(student)
        self.adapter = nn.Linear(self._tap.dim, teacher_dim, bias=False)
        self.hint: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.student(images)
        features = self._tap.features
        self.hint = self.adapter(features.flatten(1)) if features is not None else None
        return logits


class IndexedDataset(Dataset):
    """``(image, label, index)``: lets the training step look up per-sample cached teacher outputs."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index][:2]
        return image, label, index


class TeacherCache:
    """Teacher logits (and penultimate features when hints are on) for every sample of a dataset.

    Valid only when the dataset returns the same tensor for an index every epoch (no augmentation).
    """

    def __init__(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> None:
        self.logits = logits
        self.features = features

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, *, batch_size: int = 256,
              with_features: bool = False, progress: bool = True) -> TeacherCache:
        from tqdm import tqdm

        tap = _FeatureTap(teacher) if with_features and isinstance(teacher, nn.Module) else None
        logits, features = [], []
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        try:
            for batch in tqdm(loader, desc="teacher logits (cached once)", disable=not progress, leave=False):
                logits.append(teacher(batch[0]).float().clone())
                if tap is not None:
                    features.append(tap.features.flatten(1).float().clone())
        finally:
            if tap is not None:
                tap.remove()
        return cls(torch.cat(logits), torch.cat(features) if features else None)


class TeacherRunner:
    """Calls the teacher on a batch, returning logits and (optionally) penultimate features.

    The teacher only runs inference: no gradients, eval mode, float outputs that are normal (not
    inference-mode) tensors so the loss can keep them for backward.
    """

    def __init__(self, teacher: nn.Module | Callable[[torch.Tensor], torch.Tensor], *,
                 with_features: bool = False) -> None:
        self.teacher = teacher
        if isinstance(teacher, nn.Module):
            teacher.eval()
            for parameter in teacher.parameters():
                parameter.requires_grad_(False)
        self._tap = _FeatureTap(teacher) if with_features else None

    @property
    def feature_dim(self) -> int | None:
        return self._tap.dim if self._tap else None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.teacher(images).float().clone()
        features = self._tap.features.flatten(1).float().clone() if self._tap else None
        return logits, features


def distillation_step(
    loss_fn: DistillationLoss, *, teacher: TeacherRunner | None = None, cache: TeacherCache | None = None,
    hint_weight: float = 0.0,
) -> StepFn:
    """A ``step_fn`` for :func:`modelops.training.fit` that adds the teacher's soft targets.

    Batches are ``(images, labels)`` when the teacher runs live, ``(images, labels, index)`` with a
    :class:`TeacherCache`. With ``hint_weight > 0`` the model must be a :class:`HintStudent` and the
    MSE between its adapted features and the teacher's is added.
    """
    if teacher is None and cache is None:
        raise ValueError("distillation_step needs a teacher or a teacher cache")

    def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, targets = batch[0], batch[1]
        if cache is not None:
            index = batch[2].cpu()
            teacher_logits = cache.logits[index].to(images.device)
            teacher_features = cache.features[index].to(images.device) if cache.features is not None else None
        else:
            teacher_logits, teacher_features = teacher(images)
        logits = model(images)
        loss = loss_fn(logits, teacher_logits, targets)
        if hint_weight > 0:
            hint = getattr(model, "hint", None)
            if hint is None or teacher_features is None:
                raise RuntimeError("hint loss needs a HintStudent and the teacher's features")
            loss = loss + hint_weight * F.mse_loss(hint.float(), teacher_features)
        return loss, logits, targets

    return step
