"""Momentum (EMA) teachers: Mean Teacher, MoCo, BYOL, DINO and momentum self-training.

A teacher is a copy of the student whose parameters follow an exponential moving average of the
student's, ``θ_teacher <- m·θ_teacher + (1 - m)·θ_student`` (Tarvainen & Valpola, NeurIPS 2017;
He et al., MoCo, CVPR 2020). BYOL (Grill et al., NeurIPS 2020) and DINO (Caron et al., ICCV 2021)
raise ``m`` from a base value to 1 along a cosine schedule, :func:`cosine_momentum`.

Usage::

    teacher = copy_as_teacher(student)
    ...
    optimizer.step()
    ema_update_(teacher, student, cosine_momentum(step, total_steps))
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def copy_as_teacher(module: ModuleT) -> ModuleT:
    """A deep copy of ``module`` with ``requires_grad=False`` on every parameter."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


BUFFER_POLICIES = ("copy", "average", "own")


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float,
                buffers: str = "copy") -> None:
    """In place: ``teacher = momentum·teacher + (1 - momentum)·student`` for every parameter.

    ``buffers`` says what happens to the batch-norm running statistics and other buffers,
    which papers treat differently:

    - ``"copy"``: the teacher takes the student's buffers (a teacher in eval mode then uses the
      student's running statistics; common in semi-supervised EMA models);
    - ``"average"``: floating-point buffers follow the same moving average, integer ones
      (``num_batches_tracked``) are copied;
    - ``"own"``: left alone; the teacher keeps the statistics of its own forward passes in
      train mode, as in MoCo's key encoder, BYOL's target and DINO's teacher, whose updates
      touch parameters only.

    Parameters and buffers are paired in registration order, so the teacher must have the
    student's structure (e.g. made by :func:`copy_as_teacher`). One fused ``torch._foreach_*``
    call per step instead of a Python loop over tensors.
    """
    if buffers not in BUFFER_POLICIES:
        raise ValueError(f"buffers must be one of {BUFFER_POLICIES}, got {buffers!r}")
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    teacher_buffers = list(teacher.buffers())
    student_buffers = list(student.buffers())
    if len(teacher_params) != len(student_params) or len(teacher_buffers) != len(student_buffers):
        raise ValueError("teacher and student must have the same parameters and buffers")
    if teacher_params:
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
    if buffers == "own":
        return
    for teacher_buffer, student_buffer in zip(teacher_buffers, student_buffers, strict=True):
        if buffers == "average" and teacher_buffer.is_floating_point():
            teacher_buffer.lerp_(student_buffer, 1.0 - momentum)
        else:
            teacher_buffer.copy_(student_buffer)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base)·(cos(π·step / total_steps) + 1) / 2``.

    Equals ``base`` at step 0 and ``final`` at ``total_steps`` (steps beyond are clamped).
    """
    if total_steps <= 0:
        return final
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
