"""BiC bias-correction layer (Wu et al., "Large Scale Incremental Learning", CVPR 2019).

After a phase's training, BiC fits two scalars ``α, β`` on a small balanced validation set
and corrects the logits of the new classes only:

    q_k = z_k                 for old classes,
    q_k = α · z_k + β         for the classes of the newest task.

This module keeps one ``(α_t, β_t)`` pair per task, starting at ``(1, 0)`` (the identity), so
the pair of the newest task is trained in stage 2 (``newest_parameters()`` gives it to an
optimiser) and earlier pairs are kept. Two ways to apply them (``apply_to=``):

* ``"newest"`` (default, the paper's equation): only the newest task's slice is corrected,
  every other logit is returned unchanged.
* ``"all"``: every task's slice is corrected with its own pair, as PyCIL's BiC network applies
  its stack of bias layers (pairs of earlier tasks stay at the values they were fitted to).

Both are a single vectorised expression (per-class ``α``/``β`` gathered from the per-task
pairs), differentiable in the logits and the parameters.

How this gives METHODS.md §9 (the official BiC, ``resnet.py: resnet_model_fn``) inside an
:class:`~cil_models.IncrementalNet` with ``bias_correction="newest"``: expanding the network for
phase ``t`` appends an identity pair, so the student's logits are uncorrected during stage 1;
stage 2 trains :meth:`BiasCorrection.newest_parameters` with CE plus
:meth:`BiasCorrection.beta_penalty` (the code's ``0.1 · ½β² = 0.05·β²``, ``α`` unregularised);
the teacher of phase ``t+1`` is the frozen copy of the phase-``t`` network, whose newest pair
(phase ``t``'s) corrects only the teacher's newest group. Pairs of earlier phases are kept in the
state but not applied (the official code discards them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._checks import one_of
from .errors import HeadStateError, ModelConfigError

APPLY_TO = ("newest", "all")


class BiasCorrection(nn.Module):
    """Per-task affine correction ``α_t · z + β_t`` of logit slices (BiC).

    Args:
        apply_to: ``"newest"`` (default) or ``"all"`` (see the module documentation).
    """

    def __init__(self, apply_to: str = "newest") -> None:
        super().__init__()
        self.apply_to = one_of("apply_to", apply_to, APPLY_TO)
        self.alpha = nn.ParameterList()
        self.beta = nn.ParameterList()
        self.register_buffer("_placement", torch.empty(0), persistent=False)

    @property
    def num_tasks(self) -> int:
        return len(self.alpha)

    def add_task(self) -> None:
        """Append the identity pair ``(α, β) = (1, 0)`` for a new task; earlier pairs are untouched."""
        reference = self.alpha[-1] if len(self.alpha) else self._placement
        kw = {"device": reference.device, "dtype": reference.dtype}
        self.alpha.append(nn.Parameter(torch.ones(1, **kw)))
        self.beta.append(nn.Parameter(torch.zeros(1, **kw)))

    def add_tasks_to(self, num_tasks: int) -> None:
        """Add identity pairs until there are ``num_tasks`` of them."""
        if num_tasks < self.num_tasks:
            raise HeadStateError(f"num_tasks must be >= the current {self.num_tasks}, got {num_tasks}")
        for _ in range(num_tasks - self.num_tasks):
            self.add_task()

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """``[α_task, β_task]`` (e.g. for an optimiser); negative ``task`` counts from the newest."""
        if isinstance(task, bool) or not isinstance(task, int):
            raise TypeError(f"task must be an int, got {type(task).__name__}")
        if not -self.num_tasks <= task < self.num_tasks:
            raise HeadStateError(f"task must be in [{-self.num_tasks}, {self.num_tasks - 1}], got {task}")
        return [self.alpha[task], self.beta[task]]

    def newest_parameters(self) -> list[nn.Parameter]:
        """``[α, β]`` of the newest task, the ones BiC's second stage trains."""
        return self.task_parameters(-1)

    def beta_penalty(self, coefficient: float = 0.05) -> Tensor:
        """``coefficient · β²`` of the newest pair (official BiC stage 2: ``0.1 · ½β²``, i.e. 0.05; no term on α)."""
        if not self.num_tasks:
            raise HeadStateError("the bias correction has no task yet; call add_task() first")
        return coefficient * self.beta[-1].square().sum()

    def forward(self, logits: Tensor, boundaries: Sequence[int]) -> Tensor:
        """Corrected logits ``[B, C]`` for task ``boundaries = [0, s_0, s_0+s_1, ..., C]``.

        ``len(boundaries) - 1`` must equal :attr:`num_tasks` and ``boundaries[-1]`` the number
        of logits.
        """
        edges = [int(b) for b in boundaries]
        if len(edges) - 1 != self.num_tasks:
            raise HeadStateError(
                f"boundaries {edges} describe {len(edges) - 1} tasks but the bias correction has "
                f"{self.num_tasks}; call add_task() when the head expands"
            )
        if logits.dim() != 2 or logits.shape[1] != edges[-1]:
            raise ModelConfigError(f"logits must have shape [B, {edges[-1]}], got {list(logits.shape)}")
        if self.num_tasks == 0:
            return logits
        if self.apply_to == "newest":
            lo = edges[-2]
            corrected = self.alpha[-1].to(logits.dtype) * logits[:, lo:] + self.beta[-1].to(logits.dtype)
            return torch.cat((logits[:, :lo], corrected), dim=1)
        sizes = torch.tensor([hi - lo for lo, hi in zip(edges[:-1], edges[1:])], device=logits.device)
        alpha = torch.repeat_interleave(torch.cat(list(self.alpha)), sizes, output_size=edges[-1])
        beta = torch.repeat_interleave(torch.cat(list(self.beta)), sizes, output_size=edges[-1])
        return logits * alpha.to(logits.dtype) + beta.to(logits.dtype)

    def extra_repr(self) -> str:
        return f"apply_to={self.apply_to!r}, num_tasks={self.num_tasks}"
