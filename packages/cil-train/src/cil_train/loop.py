"""The phase loop shared by every method, readable top-down.

Setup (:class:`Trainer`): device and precision, the method, the data set and its scenario, augmentation
(the data source's policy), the exemplar memory. Then per phase ``t``: the phase data on the device
(uint8; whole batches are augmented there), the teacher (t > 0), the method grows the network, its
stages train it (each with its own optimiser, schedule and sampler), its end-of-phase step runs, the
memory is updated by herding into the HDF5 memory, the phase is evaluated (CNN, and NME where the method
reports it), a checkpoint is written. Checkpoints after every epoch allow ``--resume`` at any epoch of
any stage; a resumed CPU run ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

import cil_data
from cil_data import BatchAugment, ExemplarMemory
from cil_models import IncrementalNet
from cil_models.ecosystem import load_backbone_weights

from . import compilation, metrics as M
from .base_model import (cache_file as base_cache_file, fingerprint as base_fingerprint, load_base, save_base,
                         unstorable as base_unstorable)
from .checkpoint import (CHECKPOINT, Checkpoint, atomic_write_json, checkpoint_candidates, load_checkpoint,
                         remove_temporary_files, restore_generator, save_checkpoint, writing)
from .config import RunConfig, memory_budget
from .context import PhaseContext, PhaseData
from .data import build_scenario, load_dataset
from .devices import resolve_amp, resolve_device
from .distributed import DistInfo, allreduce_gradients, barrier, broadcast_buffers
from .errors import CheckpointError, TrainingDiverged
from .evaluation import Extractor, FrozenFeatures, evaluate_phase, run_summary
from .methods import Batch, method_class
from .progress import Progress
from .report import PhaseTable, write_reports
from .stages import Stage, frozen_outside, make_optimizer, scale_lr_steps
from .tblog import TensorBoardLog

__all__ = ["Trainer", "resolve_amp", "resolve_device"]

# --eval-batch-size when not given: `hatch run bench eval` (ResNet-32, 6,000 images, 2-core AMX host, 12-05) ran
# batch 128-256 fastest on the CPU, float32 1.39x and bf16 1.04x the 512 of before, 1024+ slower; GPUs keep 512
# (not measured there).
EVAL_BATCH_CPU = 256
EVAL_BATCH_GPU = 512


class Trainer:
    """Runs one experiment described by a :class:`RunConfig` into ``out_dir``."""

    def __init__(self, cfg: RunConfig, out_dir: Path, info: DistInfo | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        self.info = info or DistInfo()
        self.log = log if self.info.is_main else (lambda _msg: None)
        self.device = resolve_device(cfg.device, self.info)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # a run's convolutions keep their shapes: cuDNN tunes each once
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.method = method_class(cfg.method)(cfg)
        if self.amp_dtype == torch.float16 and self.method.no_fp16:  # --amp auto on a GPU without bf16
            self.log(f"--amp auto: float32, not float16, for {cfg.method} ({self.method.no_fp16})")
            self.amp_dtype = None
        self.dataset = load_dataset(cfg)
        self.scenario = build_scenario(cfg, self.dataset)
        policy = self.dataset.augment if cfg.augment == "auto" else cfg.augment
        self.augment = BatchAugment.from_policy(policy, self.dataset.mean, self.dataset.std)
        budget = memory_budget(cfg)
        self.memory = ExemplarMemory(budget, selection=cfg.memory_selection) if budget is not None else None
        if self.memory is not None:
            self.memory.class_order = list(self.scenario.class_order)
        self.evaluation = tuple(dict.fromkeys(self.method.evaluation + (("nme",) if cfg.nme else ())))
        self.compiled, self.compile_reason = self._compile_decision(budget)
        # batch sizes that run compiled (static shapes): evaluation chunks and each epoch's first (full) batch
        self.eval_batch_size = cfg.eval_batch_size or (EVAL_BATCH_CPU if self.device.type == "cpu" else EVAL_BATCH_GPU)
        self.compile_sizes: set[int] = {self.eval_batch_size}
        self._register_batch_size = False
        # forwards without gradients (teacher, evaluation, extraction) on folded copies; compiled runs share graphs
        self.fold_bn = cfg.fold_bn and not self.compiled
        self.frozen_features = FrozenFeatures()  # extractors' test features, kept across phases (DER)
        self.extract = Extractor(self.device, self.eval_batch_size, self._normalize, self._autocast,
                                 fold_bn=self.fold_bn)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.memory_file: str | None = None  # the memory file the run stands on (checkpoints name it)
        self.tb: TensorBoardLog | None = None  # --log tensorboard
        self._epoch_figures: dict[str, float] = {}
        self._end_figures: dict[str, float] = {}  # the method's end-of-phase figures (checkpointed once known)
        self.records: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self._last_prediction: tuple[torch.Tensor, torch.Tensor] | None = None

    def _compile_decision(self, budget: cil_data.MemoryBudget | None) -> tuple[bool, str]:
        """``--compile``: on, off, or ``auto`` from the measurements in :mod:`cil_train.compilation`."""
        if self.method.eager_only and self.cfg.compile != "off":
            return False, f"{self.cfg.method} runs eager: {self.method.eager_only}"
        images = 0
        if self.cfg.compile == "auto":
            try:
                images = compilation.planned_images(self.cfg, self.scenario, budget)
            except cil_data.DataError:
                pass
        return compilation.decide(self.cfg.compile, self.device, images, self.amp_dtype)

    # -- small helpers ----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self._to_input(self.augment.normalize(images))

    def _place(self, net: IncrementalNet) -> IncrementalNet:
        net = net.to(self.device)
        return net.to_channels_last() if self.cfg.channels_last else net

    def _memory_path(self, t: int) -> Path:
        return self.out / "memory" / f"after_phase_{t + 1:02d}.h5"

    def _save(self, ckpt: Checkpoint) -> None:
        if self.info.is_main:
            save_checkpoint(self.out / CHECKPOINT, ckpt)

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        model, first_phase, resume = self._start()
        if self.cfg.log == "tensorboard" and self.info.is_main:  # events after the checkpoint are written again
            self.tb = TensorBoardLog(self.out / "tensorboard",
                                     purge_step=self._epochs_done(resume.phase_losses if resume else []) + 1)
        try:
            return self._run_phases(model, first_phase, resume, start)
        finally:
            if self.tb is not None:
                self.tb.close()

    def _run_phases(self, model: IncrementalNet, first_phase: int, resume: Checkpoint | None,
                    start: float) -> dict[str, Any]:
        table = PhaseTable(self.log, "nme" in self.evaluation)
        for rec in self.records:
            table.row(rec)
        for t in range(first_phase, self.scenario.num_phases):
            model = self._run_phase(t, model, resume if t == first_phase else None, table, start)
        result: dict[str, Any] = {}
        if self.info.is_main:
            result = self._final_metrics(model, self.elapsed_before + time.perf_counter() - start)
            write_reports(self.out, self.cfg, result, plots=self.cfg.plots, log=self.log)
            table.summary(result)
            if self.tb is not None:
                self.tb.final(self._epochs_done([]), result)
            if self.memory_file is not None:  # the run is complete: only the last memory file is kept
                for old in (self.out / "memory").glob("after_phase_*.h5"):
                    if old.name != Path(self.memory_file).name:
                        old.unlink(missing_ok=True)
        barrier(self.info)
        return result

    def _epochs_done(self, phase_losses: list[float]) -> int:
        """Epochs trained so far in the run (all stages of all phases): the x-axis of the TensorBoard log."""
        return sum(len(r["epoch_losses"]) for r in self.records) + len(phase_losses)

    def _start(self) -> tuple[IncrementalNet, int, Checkpoint | None]:
        """The network before the first phase to train, that phase, and the checkpoint to continue from."""
        if self.cfg.resume and self.info.is_main:
            remove_temporary_files(self.out)  # of writes a killed run never finished (we hold the run lock)
        fresh = not self.cfg.resume or not any(p.is_file() for p in checkpoint_candidates(self.out))
        if fresh:
            if self.cfg.resume:
                self.log(f"resuming {self.out}: the run stopped before its first checkpoint; starting it from phase 1")
            torch.manual_seed(self.cfg.seed)
            net = self.method.build_network(self.dataset.image_shape[0])
            if self.cfg.backbone_weights:
                load_backbone_weights(net.backbone, self.cfg.backbone_weights)
            return self._place(net), 0, None
        ckpt, memory = self._load_resume_point()
        model = IncrementalNet.from_checkpoint_state(ckpt.net)
        self.records, self.elapsed_before = ckpt.records, ckpt.elapsed
        if memory is not None:
            self.memory, self.memory_file = memory
        first = ckpt.phase + 1 if ckpt.phase_complete else ckpt.phase
        resume = None if ckpt.phase_complete else ckpt
        where = f", stage {ckpt.stage + 1}, epoch {ckpt.epochs_done + 1}" if resume else ""
        self.log(f"resuming {self.out} at phase {first + 1}/{self.scenario.num_phases}{where}")
        return self._place(model), first, resume

    def _load_resume_point(self) -> tuple[Checkpoint, tuple[ExemplarMemory, str] | None]:
        """The newest checkpoint that loads together with its exemplar memory: ``checkpoint.pt``, else the
        previous one (``checkpoint.prev.pt``, said in the log); a clear error naming each file otherwise."""
        problems: list[str] = []
        for path in checkpoint_candidates(self.out):
            if not path.is_file():
                problems.append(f"{path.name} is missing")
                continue
            try:
                ckpt = load_checkpoint(path)
                memory = None
                if self.memory is not None and ckpt.memory_file:
                    # memory files live in RUN/memory/: found there also when the run folder was moved or copied
                    mem_path = self.out / "memory" / Path(ckpt.memory_file).name
                    memory = (ExemplarMemory.load(mem_path, expect_class_order=list(self.scenario.class_order)),
                              str(mem_path))
            except (CheckpointError, cil_data.DataError, FileNotFoundError) as exc:
                problems.append(str(exc))
                continue
            if problems:
                self.log(f"warning: {'; '.join(problems)}. Resuming from the previous checkpoint {path} instead "
                         f"(phase {ckpt.phase + 1}{'' if ckpt.phase_complete else f', epoch {ckpt.epochs_done}'}).")
            return ckpt, memory
        raise CheckpointError(
            f"--resume {self.out}: no checkpoint there can be resumed: {'; '.join(problems)}. Restore the damaged "
            f"file from a copy, or start the run again (a new --out).")

    # -- one phase ------------------------------------------------------------------------------------
    def _run_phase(self, t: int, model: IncrementalNet, resume: Checkpoint | None, table: PhaseTable,
                   run_start: float) -> IncrementalNet:
        phase_start = time.perf_counter()
        phase = self.scenario.phase(t)
        self._end_figures = {}
        if resume is not None and self.memory_file and Path(self.memory_file).name == self._memory_path(t).name:
            self._rewind_memory(t)  # resumed inside a stage after this phase's memory update
        data = self._phase_data(phase)
        gen = torch.Generator().manual_seed(self.cfg.seed * 104729 + t)
        aug_gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed * 1299709 + t * 31 + self.info.rank)
        if resume is not None:
            teacher = IncrementalNet.from_checkpoint_state(resume.teacher) if resume.teacher else None
        else:
            teacher = self.method.make_teacher(model) if t > 0 else None
        ctx = self._context(phase, model, teacher, data, gen)
        if resume is None:
            torch.manual_seed(self.cfg.seed * 7919 + t)
            model = self.method.grow_network(ctx)
        ctx.model = model = self._place(model)
        ctx.teacher = self._place(teacher).eval() if teacher is not None else None
        if self.compiled:  # in place, once per extractor: later phases and the teacher reuse the graphs
            compilation.compile_extractors(model, self.compile_sizes)
            if ctx.teacher is not None:
                compilation.compile_extractors(ctx.teacher, self.compile_sizes)
        ctx.net = model
        self._log_phase(phase, data)
        self.method.start_phase(ctx)
        if resume is not None:
            self.method.load_state_dict(resume.method)
        phase_losses = list(resume.phase_losses) if resume is not None else []
        stages = self.method.stages(ctx)
        first_after = next((k for k, s in enumerate(stages) if s.after_memory), len(stages))
        done = resume.stage if resume is not None else 0
        base = self._base_file(phase, stages) if (t == 0 and resume is None) else None
        if base is not None and base[0].is_file():
            net_state, trained_by = load_base(base[0], base[1])
            model.load_state_dict(net_state["state_dict"])
            self.log(f"phase 1: the base model of {base[0]} (trained by {trained_by}) replaces phase 1's training")
            done = first_after = len(stages)
        self._run_stages(ctx, stages, range(max(done, 0), first_after), aug_gen, phase_losses, resume, run_start)
        if base is not None and done == 0 and self.info.is_main:
            save_base(base[0], base[1], model.checkpoint_state(), self.cfg.method)
            self.log(f"phase 1: base model written to {base[0]}")
        train_seconds = time.perf_counter() - phase_start
        recorded = False
        if done < first_after or resume is None:
            self._end_figures = {key: float(value) for key, value in self.method.end_phase(ctx).items()}
            # the weights are final from here unless stages follow the memory update: one folded copy serves the
            # features for herding and the evaluation
            with self.extract.fixed(model):
                added = self._update_memory(model, data, phase)
                if first_after == len(stages):
                    self._record_phase(ctx, phase, data, phase_losses, self._end_figures, table, phase_start,
                                       train_seconds, added_features=added if ctx.model is model else None)
                    recorded = True
        else:  # a resume inside a stage after the memory update: the updated memory is on disk
            self._end_figures = dict(resume.end_figures)
            self._load_memory(str(self.out / "memory" / Path(resume.memory_file).name))
        if first_after < len(stages):  # stages on the updated memory alone (balanced finetuning)
            ctx.data = self._memory_data()
            started = time.perf_counter()
            self._run_stages(ctx, stages, range(max(done, first_after), len(stages)), aug_gen, phase_losses, resume,
                             run_start)
            train_seconds += time.perf_counter() - started
        if not recorded:
            with self.extract.fixed(model):
                self._record_phase(ctx, phase, data, phase_losses, self._end_figures, table, phase_start,
                                   train_seconds)
        self._save(Checkpoint(config=self.cfg.to_dict(), phase=t, phase_complete=True, net=model.checkpoint_state(),
                              records=self.records, elapsed=self.elapsed_before + time.perf_counter() - run_start,
                              memory_file=self.memory_file, stage=len(stages), step=ctx.step,
                              method=self.method.state_dict(), phase_losses=phase_losses))
        if self.info.is_main:
            if self.memory is not None and t > 1:  # t-1's file stays: the previous checkpoint may need it
                self._memory_path(t - 2).unlink(missing_ok=True)
            atomic_write_json(self.out / "metrics.json", {"complete": False, "phases": self.records})
        return model

    def _base_file(self, phase: cil_data.Phase, stages: list[Stage]) -> tuple[Path, dict[str, Any]] | None:
        """The base model's file and fingerprint with ``--base-checkpoint`` or ``--base-cache`` (see
        ``base_model``); None without them, or with the cache when this method's phase 0 cannot be stored."""
        if not (self.cfg.base_checkpoint or self.cfg.base_cache):
            return None
        why = base_unstorable(self.method, stages)
        if why and not self.cfg.base_checkpoint:
            self.log(f"phase 1: trained here, not from --base-cache: {why}")
            return None
        n = phase.num_seen
        print_ = base_fingerprint(self.cfg, self.method, stages, list(self.scenario.class_order[:n]),
                                  self.scenario.train_counts[:n].tolist(), str(self.amp_dtype))
        if self.cfg.base_checkpoint:
            return Path(self.cfg.base_checkpoint), print_
        return base_cache_file(self.cfg.base_cache, print_), print_

    def _phase_data(self, phase: cil_data.Phase) -> PhaseData:
        """New classes' images + the memory on the device, with the method's balanced held-out split."""
        new_x, new_y = self.scenario.train_data(phase)
        xs, ys, mem = [new_x], [new_y], [torch.zeros(len(new_y), dtype=torch.bool)]
        if self.memory is not None and len(self.memory) > 0:
            xs.append(self.memory.images)
            ys.append(self.memory.labels)
            mem.append(torch.ones(len(self.memory), dtype=torch.bool))
        y_cpu = torch.cat(ys)
        train, val = torch.arange(len(y_cpu)), torch.arange(0)
        held_out = self.method.held_out_per_class(phase)
        if held_out:
            # at most n_c - 1 per class: a tail class with 1 or 2 images keeps one for training (logged)
            split_gen = torch.Generator().manual_seed(self.cfg.seed * 15485863 + phase.index)
            split = cil_data.validation_split_at_most(y_cpu, held_out, split_gen)
            train, val = split.train, split.val
            if split.reduced:
                self.log(f"phase {phase.index + 1}: {split.describe(held_out)}")
        return PhaseData(x=torch.cat(xs).to(self.device), y=y_cpu.to(self.device),
                         is_memory=torch.cat(mem).to(self.device), train=train, val=val, new_x=new_x, new_y=new_y)

    def _context(self, phase: cil_data.Phase, model: IncrementalNet, teacher: IncrementalNet | None,
                 data: PhaseData, gen: torch.Generator) -> PhaseContext:
        num_old, num_seen = phase.num_old, phase.num_seen
        counts_all = self.scenario.train_counts
        original = counts_all[:num_seen].to(self.device)
        if self.memory is not None and num_old:
            mem_counts = self.memory.class_counts(num_old).to(self.device)
        else:
            mem_counts = torch.zeros(num_old, dtype=torch.int64, device=self.device)
        return PhaseContext(
            run=self.cfg, t=phase.index, model=model, teacher=teacher, device=self.device, num_old=num_old,
            num_new=phase.num_new, boundaries=list(self.scenario.boundaries[: phase.index + 2]), data=data,
            class_counts=torch.bincount(data.y[data.train.to(self.device)], minlength=num_seen).float(),
            original_counts=original, memory_counts=mem_counts, n_seen=int(original[:num_old].sum()),
            n_new=data.num_new_images, dataset_mean_count=float(counts_all.double().mean()), generator=gen,
            normalize=self._normalize, extract=self.extract,
            fold_teacher=self.fold_bn,
        )

    def _log_phase(self, phase: cil_data.Phase, data: PhaseData) -> None:
        held = f", {len(data.val)} held out for validation" if len(data.val) else ""
        self.log(f"phase {phase.index + 1}/{self.scenario.num_phases}: classes {phase.num_old}..{phase.num_seen - 1} "
                 f"({phase.num_new} new), {data.num_new_images} new images + {data.num_exemplars} exemplars{held}")

    # -- stages ------------------------------------------------------------------------------------------
    def _run_stages(self, ctx: PhaseContext, stages: list[Stage], indices: range, aug_gen: torch.Generator,
                    phase_losses: list[float], resume: Checkpoint | None, run_start: float) -> None:
        for k in indices:
            here = resume if (resume is not None and k == resume.stage) else None
            self._run_stage(ctx, k, stages[k], k == len(stages) - 1, aug_gen, phase_losses, here, run_start)

    def _load_memory(self, path: str) -> None:
        self.memory = ExemplarMemory.load(path, expect_class_order=list(self.scenario.class_order))
        self.memory_file = path

    def _rewind_memory(self, t: int) -> None:
        """The memory as phase ``t`` began (its data and statistics are built from it)."""
        if t > 0:
            self._load_memory(str(self._memory_path(t - 1)))
        else:
            self.memory = ExemplarMemory(self.memory.budget, selection=self.cfg.memory_selection)
            self.memory.class_order = list(self.scenario.class_order)
            self.memory_file = None

    def _memory_data(self) -> PhaseData:
        """The updated memory alone (every seen class), for stages that run after the memory update."""
        x, y = self.memory.images, self.memory.labels
        everything = torch.arange(len(y))
        return PhaseData(x=x.to(self.device), y=y.to(self.device), is_memory=torch.ones(len(y), dtype=torch.bool,
                         device=self.device), train=everything, val=everything[:0], new_x=x[:0], new_y=y[:0])

    def _step_budget(self, ctx: PhaseContext, stage: Stage, batches: int) -> Stage:
        """The main stage with as many epochs as ``--phase-steps`` / ``--base-steps`` (the same number of
        optimiser steps for every method of a protocol, whatever its batches), its step schedule scaled."""
        budget = self.cfg.base_steps if ctx.t == 0 else self.cfg.phase_steps
        if not budget or batches == 0:
            return stage
        epochs = max(1, round(budget / batches))
        steps = scale_lr_steps(stage.lr_steps, stage.epochs, epochs) if stage.lr_steps else ()
        if ctx.t == 0 or ctx.t == 1:  # once for the base phase, once for the incremental ones
            which = "--base-steps" if ctx.t == 0 else "--phase-steps"
            self.log(f"phase {ctx.t + 1}: {epochs} epochs of {batches} batches = {epochs * batches} steps "
                     f"({which} {budget})")
        return dataclasses.replace(stage, epochs=epochs, lr_steps=steps)

    def _run_stage(self, ctx: PhaseContext, k: int, stage: Stage, is_last: bool, aug_gen: torch.Generator,
                   phase_losses: list[float], resume: Checkpoint | None, run_start: float) -> None:
        """Train ``stage`` (continuing from ``resume`` when it stopped inside this stage)."""
        sampler = stage.make_sampler(ctx)
        if k == 0:
            stage = self._step_budget(ctx, stage, len(sampler))
        ctx.stage = stage
        params = stage.trainable(ctx.model)
        with frozen_outside(ctx.model, params):
            self._train_stage(ctx, k, stage, sampler, params, is_last, aug_gen, phase_losses, resume, run_start)

    def _train_stage(self, ctx: PhaseContext, k: int, stage: Stage, sampler: Any, params: list[torch.nn.Parameter],
                     is_last: bool, aug_gen: torch.Generator, phase_losses: list[float], resume: Checkpoint | None,
                     run_start: float) -> None:
        opt, sched = make_optimizer(stage, params)
        ctx.optimizer = opt
        first_epoch = 0
        if resume is not None:
            if resume.optimizer is not None:
                opt.load_state_dict(resume.optimizer)
                sched.load_state_dict(resume.scheduler)
            ctx.generator.set_state(resume.gen)
            restore_generator(aug_gen, resume.aug_gen, self.log)
            sampler.load_state_dict(resume.sampler)
            if self.scaler is not None and resume.scaler:
                self.scaler.load_state_dict(resume.scaler)
            first_epoch, ctx.step = resume.epochs_done, resume.step
        loss_fn = stage.loss or self.method.loss
        for epoch in range(first_epoch, stage.epochs):
            ctx.epoch = epoch
            phase_losses.append(self._train_epoch(ctx, stage, sampler, loss_fn, params, aug_gen))
            if self.tb is not None:
                self.tb.epoch(self._epochs_done(phase_losses), self._epoch_figures)
            sched.step()
            broadcast_buffers(ctx.model, self.info)
            every = self.cfg.checkpoint_every
            if every and (epoch + 1) % every == 0 and not (is_last and epoch + 1 == stage.epochs):
                self._save(Checkpoint(
                    config=self.cfg.to_dict(), phase=ctx.t, phase_complete=False, net=ctx.model.checkpoint_state(),
                    records=self.records, elapsed=self.elapsed_before + time.perf_counter() - run_start,
                    memory_file=self.memory_file,
                    stage=k, epochs_done=epoch + 1, step=ctx.step,
                    teacher=ctx.teacher.checkpoint_state() if ctx.teacher is not None else None,
                    method=self.method.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                    sampler=sampler.state_dict(), scaler=self.scaler.state_dict() if self.scaler is not None else None,
                    gen=ctx.generator.get_state(), aug_gen=aug_gen.get_state(), phase_losses=phase_losses,
                    end_figures=self._end_figures))

    def _train_epoch(self, ctx: PhaseContext, stage: Stage, sampler: Any, loss_fn: Callable, params: list,
                     aug_gen: torch.Generator) -> float:
        """One pass of ``sampler``; returns the mean loss (and stops the run on a non-finite one)."""
        T = self.scenario.num_phases
        label = "" if stage.name == "main" else f" {stage.name}"
        ctx.model.train(stage.train_mode)
        self._register_batch_size = self.compiled
        progress = Progress(len(sampler), f"phase {ctx.t + 1}/{T}{label} epoch {ctx.epoch + 1:>3}/{stage.epochs}",
                            self.cfg.progress if self.info.is_main else "none")
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        figure_sums: dict[str, Any] = {}
        n_steps = 0
        for pos in sampler:
            loss, figures = self._train_step(ctx, pos, loss_fn, params, aug_gen)
            n_steps += 1
            loss_sum += loss.detach().double()
            for key, value in figures.items():  # summed on the device: no synchronisation per step
                figure_sums[key] = figure_sums.get(key, 0.0) + value
            if progress.mode == "bar" and progress.due():
                progress.update(1, loss=float(loss_sum / n_steps), lr=ctx.current_lr())
            else:
                progress.update(1)
        mean_loss = float(loss_sum / max(n_steps, 1))
        if not math.isfinite(mean_loss):
            progress.close(loss=mean_loss)
            kept = (f"the last good checkpoint is kept in {self.out / CHECKPOINT}" if (self.out / CHECKPOINT).exists()
                    else "no checkpoint had been written yet")
            raise TrainingDiverged(f"the loss became {mean_loss} in phase {ctx.t + 1}, epoch {ctx.epoch + 1}; training "
                                   f"stopped and {kept}. Try a smaller --lr, --amp off, or check the data.")
        means = {key: float(value) / max(n_steps, 1) for key, value in figure_sums.items()}
        progress.close(loss=mean_loss, **means, lr=ctx.current_lr())
        self._epoch_figures = {"loss": mean_loss, **means, "lr": ctx.current_lr()}
        return mean_loss

    def _train_step(self, ctx: PhaseContext, pos: torch.Tensor, loss_fn: Callable, params: list,
                    aug_gen: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.info.enabled:
            pos = pos[self.info.rank :: self.info.world_size]
        pos = pos.to(self.device)
        data = ctx.data
        x = self._to_input(self.augment(data.x[pos], generator=aug_gen)) if ctx.stage.augment else \
            self._normalize(data.x[pos])
        if self._register_batch_size:  # an epoch's first batch is a full one: that size runs compiled
            self.compile_sizes.add(int(x.shape[0]))
            self._register_batch_size = False
        batch = Batch(x=x, y=data.y[pos], is_memory=data.is_memory[pos])
        with self._autocast():
            loss, figures = loss_fn(ctx, batch)
        opt = ctx.optimizer
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
        else:
            loss.backward()
        allreduce_gradients(params, self.info)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        self.method.after_step(ctx)
        ctx.step += 1
        return loss, figures

    # -- after training -----------------------------------------------------------------------------------
    def _update_memory(self, model: IncrementalNet, data: PhaseData,
                       phase: cil_data.Phase) -> torch.Tensor | None:
        """Herding (or random selection) of the new classes into the memory, saved as this phase's file.
        Returns the features herding extracted for the exemplars it added (None without herding, or on ranks
        other than the main one): the evaluation's class means reuse them while the weights stay."""
        if self.memory is None:
            return None
        added = None
        path = self._memory_path(phase.index)
        if self.info.is_main:
            herding = self.cfg.memory_selection == "herding"
            feats = self.extract(model, data.new_x, "features").cpu() if herding else None
            gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + phase.index)
            self.memory.update(data.new_x, data.new_y, feats, phase.num_seen, generator=gen)
            if feats is not None:
                added = feats[self.memory.added]
            with writing(path, "exemplar memory"):
                self.memory.save(path)
        barrier(self.info)
        if not self.info.is_main:
            self.memory = ExemplarMemory.load(path, expect_class_order=list(self.scenario.class_order))
        self.memory_file = str(path)
        return added

    def _record_phase(self, ctx: PhaseContext, phase: cil_data.Phase, data: PhaseData, phase_losses: list[float],
                      end_figures: dict[str, float], table: PhaseTable, phase_start: float,
                      train_seconds: float, added_features: torch.Tensor | None = None) -> None:
        if not self.info.is_main:
            return
        rec, pred, target = evaluate_phase(ctx.model, self.scenario, phase.index, self.extract, self.evaluation,
                                           self.memory, added_features=added_features,
                                           frozen_features=self.frozen_features)
        self._last_prediction = (pred, target)
        rec.update(
            phase=phase.index + 1, num_classes=phase.num_seen, num_new=phase.num_new,
            train_images=data.num_new_images, exemplars=data.num_exemplars,
            memory_after=len(self.memory) if self.memory is not None else 0, epoch_losses=phase_losses,
            seconds=time.perf_counter() - phase_start, train_seconds=train_seconds,
            **{key: float(value) for key, value in end_figures.items()},
        )
        self.records.append(rec)
        if self.tb is not None:
            self.tb.phase(self._epochs_done([]), rec)
        table.row(rec)

    def _final_metrics(self, model: IncrementalNet, wall: float) -> dict[str, Any]:
        """``metrics.json``: the summary of the records, the last confusion matrix, weight norms, memory."""
        out = run_summary(self.records, method=self.cfg.method, data_name=self.dataset.name, scenario=self.scenario,
                          class_names=self.dataset.class_names)
        if self._last_prediction is None:  # a resumed run whose phases were all done already
            _, pred, target = evaluate_phase(model, self.scenario, self.scenario.num_phases - 1, self.extract, (), None)
            self._last_prediction = (pred, target)
        pred, target = self._last_prediction
        out["confusion_matrix"] = M.confusion_matrix(pred, target, model.num_classes).tolist()
        out["weight_norms"] = [float(v) for v in model.head.weight_norms()]
        out["memory_per_class"] = ([int(v) for v in self.memory.class_counts(model.num_classes)]
                                   if self.memory is not None else [])
        out["phase_seconds"] = [r["seconds"] for r in self.records]
        out["wall_seconds"] = wall
        out["phases"] = self.records
        return out
