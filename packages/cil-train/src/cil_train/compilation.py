"""``--compile``: the feature extractors compiled once per run, and when compilation pays (``auto``).

What is compiled. ``torch.compile`` of the whole network (what ``--compile`` did before) recompiled in every
phase, because the head grows, and never reached the teacher. Here each feature extractor is compiled in
place (``nn.Module.compile``): its state dict, checkpoints and parameter names are unchanged, the head stays
eager (its class dimension changes every phase), and every caller of the extractor uses the same compiled
graphs: the training step, the teacher (a frozen copy whose extractors are compiled the same way and reuse the
graphs, since parameters are graph inputs), evaluation and the feature extraction for herding. Shapes are
static and gated by batch size (:class:`SizeGatedCompile`): each epoch's first batch and the evaluation chunk
size run compiled, other sizes (an epoch's last short batch, an evaluation's last chunk) run eager; left to
itself the compiler specialised again for each new last-batch size (three more graphs in a 5-phase run). A run
then compiles one graph per mode (training with gradients, evaluation, the teacher) in its first two phases
and none later.

Caching. Inductor keeps the compiled code in its on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_<user>``), so later runs on the same machine (the other cells of a matrix) skip code
generation. ``hatch run bench compile`` measures both (ResNet-8, batch 64, 1×28×28, one thread, float32, on a
2-core AMD EPYC with AVX2). Quiet host, gated shapes as here: one run's compilation took 28.2 s with an empty
cache and 2.7 s with a warm one, and a compiled training step was 1.15× the eager one (918 vs 800 img/s): it
breaks even after about 175,000 training images with a cold cache, 17,000 with a warm one. Under load, with the
earlier ungated shapes (which also compiled the last short batch): 64.7 s and 6.1 s, 1.09×, break-even after
about 420,000 images cold. On CPUs with AMX
the compiled ResNet-32 step was 1.32× (905 vs 687 img/s, bf16 autocast, channels_last). On a CPU with
AVX-512-bf16 but no AMX (2-core AMD EPYC, where ``--amp auto`` also picks bf16) it did not pay: the compiled
ResNet-8 step with a teacher ran 0.84-0.99× the eager one in bf16 (1.12× in float32), and whole
``glyphs100-lt-fair`` runs took longer compiled than eager (see the README's "Compilation").

Whole bf16 runs on a CPU with AMX did not gain either (2-core Intel Xeon with AMX, 2026-12-08, ``hatch run bench
revisions`` of one commit with ``--args-a='--compile off' --args-b='--compile on'``, empty cache, the
``glyphs100-lt`` preset, ResNet-8, one thread each, side by side): 0.94× at 15 epochs a phase (400,000 planned
images) and 0.98× at 20 (533,000); in another pair at 15 epochs, timed phase by phase, phases 2-10 ran 3 %
faster compiled (342 → 331 s) and phase 1 36 s slower (12 → 48 s, the compilation). (The 1.32× above is a
ResNet-32 step at batch 128 on two threads; whole runs of that network were not measured long enough to compile.)

``auto`` (the default) compiles on a CPU when the run plans at least :data:`AUTO_MIN_IMAGES` training images
(forward + backward passes of one image, see :func:`planned_images`): past both cold-cache break-evens
above, so even the first run on a machine gains, except in bf16 (with AMX or without), which stays eager
(and keeps ``--fold-bn``, which a compiled run does not use): in practice ``auto`` compiles long float32 runs,
i.e. on CPUs without bf16 support, where ``--amp auto`` trains in float32. The rule looks at the run's
configuration only, not at the state of the cache, so one command compiles (or not) the same way every time: a
compiled network's numerics differ from the eager one's in the last bits, and a result should not depend on what
ran before on the machine. GPUs: not measured yet for these networks, so ``auto`` leaves them eager (``--compile
on`` compiles).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["AUTO_MIN_IMAGES", "SizeGatedCompile", "compile_extractors", "decide", "is_compiled", "planned_images"]

#: planned training images from which ``auto`` compiles (above the cold-cache break-even measured on the CPU)
AUTO_MIN_IMAGES = 500_000


def is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


class SizeGatedCompile:
    """An extractor's call: the compiled graph for the batch sizes in ``sizes``, the eager module otherwise.

    Training and evaluation run mostly full batches; the last batch of an epoch and the last chunk of an
    evaluation have other sizes, and each new size made the compiler specialise again (in a 5-phase run, the
    last batches of 9, 40 and 108 images compiled three more graphs, 30-40 s each for a ResNet-32 on 2 cores).
    With the sizes fixed (static shapes) and the rest eager, a run compiles one graph per mode (training with
    gradients, evaluation, the teacher) in its first phases and none later. ``sizes`` is shared and filled by
    the trainer with every stage's batch size and the evaluation batch size."""

    def __init__(self, module: torch.nn.Module, sizes: set[int]) -> None:
        self.module, self.sizes = module, sizes
        self.compiled = torch.compile(module._call_impl, dynamic=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() > 0 and int(x.shape[0]) in self.sizes:
            return self.compiled(*args, **kwargs)
        return self.module._call_impl(*args, **kwargs)


def compile_extractors(net: Any, sizes: set[int]) -> int:
    """Compile every feature extractor of ``net`` in place that is not compiled yet, for the batch sizes in
    ``sizes`` (:class:`SizeGatedCompile`); the number compiled now. A deep copy (the teacher, DER's next
    extractor) starts uncompiled: ``nn.Module`` drops the compiled call when it is copied."""
    count = 0
    for extractor in net.extractors:
        if not is_compiled(extractor):
            extractor._compiled_call_impl = SizeGatedCompile(extractor, sizes)
            count += 1
    return count


def planned_images(cfg: Any, scenario: Any, budget: Any) -> int:
    """Training images (one forward + backward each) the run's main stages plan: per phase ``epochs ×`` (new
    images + exemplars), or ``steps × batch size`` under ``--phase-steps`` / ``--base-steps``. An estimate
    (a method's extra stages and own batch sizes are left out) for the ``auto`` decision."""
    counts = scenario.train_counts
    total = 0
    for t in range(scenario.num_phases):
        phase = scenario.phase(t)
        steps = cfg.base_steps if t == 0 else cfg.phase_steps
        if steps:
            total += int(steps) * int(cfg.batch_size)
            continue
        epochs = (cfg.base_epochs or cfg.epochs) if t == 0 else cfg.epochs
        memory = sum(budget.quotas(counts[: phase.num_old].tolist())) if budget is not None and t > 0 else 0
        total += int(epochs) * (int(phase.train_indices.numel()) + int(memory))
    return total


def decide(mode: str, device: torch.device, images: int,
           amp_dtype: torch.dtype | None = None) -> tuple[bool, str]:
    """``(compile?, why)`` for ``--compile MODE`` (see the module's docstring for the measurements behind it).

    ``amp_dtype``: the run's autocast dtype (None: float32)."""
    if mode in ("on", "off"):
        return mode == "on", f"--compile {mode}"
    if device.type != "cpu":
        return False, "--compile auto: not measured on GPUs yet"
    if images < AUTO_MIN_IMAGES:
        return False, f"--compile auto: {images:,} planned training images < {AUTO_MIN_IMAGES:,}"
    if amp_dtype == torch.bfloat16:
        return False, ("--compile auto: bf16 on a CPU, where compiled whole runs were not faster (with AMX or "
                       "without)")
    return True, f"--compile auto: {images:,} planned training images ≥ {AUTO_MIN_IMAGES:,}"
