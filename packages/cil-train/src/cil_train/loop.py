"""The phase loop shared by every method.

Per phase ``t``: the teacher is a frozen copy of the network, the head grows by the phase's classes,
the phase's training data (new classes + exemplar memory) is put on the device as uint8 and whole
batches are augmented there; the optimiser and schedule are rebuilt; the recipe supplies the loss.
After the last epoch: the recipe's post-phase step (e.g. weight aligning), the memory update by
herding into the HDF5 memory, evaluation on the test images of all seen classes, a checkpoint.
Checkpoints every epoch allow ``--resume``; a resumed CPU run ends with the same metrics.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

import cil_data
from cil_data import BatchAugment, ExemplarMemory, MemoryBudget
from cil_models import IncrementalNet, NMEClassifier

from . import metrics as M
from .checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from .config import RunConfig
from .context import PhaseContext
from .data import build_scenario, load_dataset
from .distributed import DistInfo, allreduce_gradients, barrier, broadcast_buffers
from .errors import ConfigError, TrainingDiverged
from .methods import Batch, Recipe, make_recipe
from .progress import Progress
from .report import PhaseTable, write_reports

__all__ = ["Trainer", "resolve_amp", "resolve_device"]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
        if info.enabled and name == "cuda":
            name = f"cuda:{info.local_rank}"
    elif name != "cpu":
        raise ConfigError(f"--device {name!r} is not allowed: use auto, cpu, cuda or cuda:N.")
    return torch.device(name)


def _cpu_has_fast_bf16() -> bool:
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except Exception:  # pragma: no cover - probe failure means "no"
                pass
    return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32. ``auto`` = bf16 on GPUs that support it and on CPUs with
    AMX / AVX-512-bf16 (where it is ~1.7× faster), float32 elsewhere."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp off.")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_fast_bf16() else None


@dataclass
class PhaseData:
    """The phase's training data on the device: uint8 images, incremental labels, replay flags."""

    x: torch.Tensor
    y: torch.Tensor
    is_memory: torch.Tensor
    train: torch.Tensor  # positions used for training (all, or all minus a validation split)
    val: torch.Tensor  # positions held out as a balanced validation set (may be empty)
    new_x: torch.Tensor = field(repr=False, default=None)  # new classes' images (CPU), for the memory update
    new_y: torch.Tensor = field(repr=False, default=None)


class Trainer:
    """Runs one experiment described by a :class:`RunConfig` into ``out_dir``."""

    def __init__(self, cfg: RunConfig, out_dir: Path, info: DistInfo | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.info = info or DistInfo()
        self.log = log if self.info.is_main else (lambda _msg: None)
        self.device = resolve_device(cfg.device, self.info)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.recipe: Recipe = make_recipe(cfg)
        self.dataset = load_dataset(cfg)
        self.scenario = build_scenario(cfg, self.dataset)
        self.augment = BatchAugment(self.dataset.mean, self.dataset.std, crop_padding=4, flip=True)
        self.memory: ExemplarMemory | None = None
        budget = self._memory_budget()
        if budget is not None:
            self.memory = ExemplarMemory(budget, selection=cfg.memory_selection)
            self.memory.class_order = list(self.scenario.class_order)
        self.train_counts_all = self.scenario.train_counts  # N_c, incremental order
        self.records: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self._last_prediction: tuple[torch.Tensor, torch.Tensor] | None = None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    # ---------------------------------------------------------------------------------------
    def _memory_budget(self) -> MemoryBudget | None:
        cfg = self.cfg
        if self.recipe.memory == "none":
            return None
        if cfg.memory_total:
            return MemoryBudget.total(cfg.memory_total)
        if cfg.memory_total is None and cfg.memory_per_class:
            return MemoryBudget.per_class(cfg.memory_per_class)
        return None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    # ---------------------------------------------------------------------------------------
    def _build_model(self) -> IncrementalNet:
        torch.manual_seed(self.cfg.seed)
        net = IncrementalNet(self.cfg.backbone, in_channels=self.dataset.image_shape[0])
        return net

    def _prepare_model(self, net: IncrementalNet) -> IncrementalNet:
        net = net.to(self.device)
        if self.cfg.channels_last:
            net.to_channels_last()
        return net

    def _forward_module(self, model: IncrementalNet) -> torch.nn.Module:
        if self.cfg.compile:
            return torch.compile(model)
        return model

    def _phase_data(self, t: int) -> PhaseData:
        phase = self.scenario.phase(t)
        ds = self.dataset
        new_x = ds.train_images[phase.train_indices]
        new_y = self.scenario.to_incremental(ds.train_labels[phase.train_indices])
        xs, ys, mem = [new_x], [new_y], [torch.zeros(len(new_y), dtype=torch.bool)]
        if self.memory is not None and len(self.memory) > 0:
            xs.append(self.memory.images)
            ys.append(self.memory.labels)
            mem.append(torch.ones(len(self.memory), dtype=torch.bool))
        x = torch.cat(xs).to(self.device)
        y = torch.cat(ys).to(self.device)
        is_memory = torch.cat(mem).to(self.device)
        everything = torch.arange(len(y))
        return PhaseData(x=x, y=y, is_memory=is_memory, train=everything, val=everything[:0], new_x=new_x, new_y=new_y)

    def _context(self, t: int, model: IncrementalNet, net: torch.nn.Module, teacher: IncrementalNet | None,
                 data: PhaseData) -> PhaseContext:
        phase = self.scenario.phase(t)
        num_old, num_seen = phase.num_old, phase.num_seen
        y_train = data.y[data.train.to(self.device)]
        class_counts = torch.bincount(y_train, minlength=num_seen).float()
        original = self.train_counts_all[:num_seen].to(self.device)
        if self.memory is not None and num_old:
            mem_counts = self.memory.class_counts(num_old).to(self.device)
        else:
            mem_counts = torch.zeros(num_old, dtype=torch.int64, device=self.device)
        return PhaseContext(
            cfg=self.cfg, t=t, net=net, model=model, teacher=teacher, device=self.device,
            num_old=num_old, num_new=phase.num_new, boundaries=list(self.scenario.boundaries[: t + 2]),
            class_counts=class_counts, original_counts=original, memory_counts=mem_counts,
            n_seen=int(original[:num_old].sum()), n_new=int((~data.is_memory).sum()),
            dataset_mean_count=float(self.train_counts_all.double().mean()),
        )

    def _optimizer(self, model: IncrementalNet, t: int) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=self.recipe.phase_lr(t), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        epochs = cfg.epochs
        if cfg.lr_schedule == "cosine":
            fn = lambda e: 0.5 * (1.0 + math.cos(math.pi * e / epochs))  # noqa: E731
        elif cfg.lr_schedule == "step":
            steps = sorted(cfg.lr_steps)
            fn = lambda e: cfg.lr_decay ** sum(e >= s for s in steps)  # noqa: E731
        else:
            fn = lambda e: 1.0  # noqa: E731
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, fn)

    def _batches(self, data: PhaseData, gen: torch.Generator, sampler: Any) -> Iterator[torch.Tensor]:
        """Positions (into ``data``) of each global batch of one epoch."""
        if sampler is not None:
            rp, new_pos, mem_pos = sampler
            for new_idx, mem_idx in rp:
                yield torch.cat([new_pos[new_idx], mem_pos[mem_idx]])
            return
        order = data.train[torch.randperm(len(data.train), generator=gen)]
        yield from order.split(self.cfg.batch_size)

    def _make_sampler(self, data: PhaseData, t: int, gen: torch.Generator) -> tuple[Any, torch.Tensor, torch.Tensor] | None:
        """SS-IL's ratio-preserving sampler with the positions of the new and the memory samples, or None."""
        if self.recipe.sampler != "ratio_preserving" or t == 0:
            return None
        is_mem = data.is_memory.cpu()[data.train]
        new_pos, mem_pos = data.train[~is_mem], data.train[is_mem]
        if len(mem_pos) == 0:
            raise ConfigError(f"--method {self.cfg.method} needs memory samples in phase {t + 1}, but the memory is empty.")
        rp = cil_data.RatioPreservingSampler(
            len(new_pos), len(mem_pos), batch_new=self.cfg.ssil_batch_new, batch_memory=self.cfg.ssil_batch_memory,
            generator=gen,
        )
        return rp, new_pos, mem_pos

    def _num_steps(self, data: PhaseData, sampler: Any) -> int:
        if sampler is not None:
            return len(sampler[0])
        return math.ceil(len(data.train) / self.cfg.batch_size)

    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _extract(self, model: IncrementalNet, images: torch.Tensor, what: str) -> torch.Tensor:
        """Features (``what='features'``) or logits of uint8 ``images`` in eval mode, in batches."""
        model.eval()
        outs = []
        for chunk in images.split(self.cfg.eval_batch_size):
            x = self._to_input(self.augment.normalize(chunk.to(self.device, non_blocking=True)))
            with self._autocast():
                out = model.features(x) if what == "features" else model(x)
            outs.append(out.float())
        return torch.cat(outs) if outs else torch.zeros(0, device=self.device)

    def _evaluate(self, model: IncrementalNet, t: int) -> dict[str, Any]:
        phase = self.scenario.phase(t)
        ds = self.dataset
        x = ds.test_images[phase.test_indices]
        y = self.scenario.to_incremental(ds.test_labels[phase.test_indices]).to(self.device)
        logits = self._extract(model, x, "logits")
        pred = logits.argmax(1)
        rec = self._prediction_metrics(pred, y, t)
        if self.recipe.uses_nme or self.cfg.nme:
            if self.memory is None or len(self.memory) == 0:
                rec["nme"] = None
            else:
                nme = NMEClassifier()
                feats = self._extract(model, self.memory.images, "features")
                nme.fit(feats, self.memory.labels.to(self.device), phase.num_seen)
                nme_pred = nme.predict(self._extract(model, x, "features"))
                rec["nme"] = self._prediction_metrics(nme_pred, y, t)
        rec["_pred"] = pred.cpu()
        rec["_target"] = y.cpu()
        return rec

    def _prediction_metrics(self, pred: torch.Tensor, y: torch.Tensor, t: int) -> dict[str, Any]:
        phase = self.scenario.phase(t)
        old, new = M.old_new_accuracy(pred, y, phase.num_old)
        return {
            "acc": M.accuracy(pred, y),
            "task_acc": M.task_accuracies(pred, y, self.scenario.boundaries[: t + 2]),
            "old_acc": old,
            "new_acc": new,
            "imbalance_score": M.imbalance_score(pred, y, phase.num_old),
            "many_medium_few": M.shot_accuracy(pred, y, self.train_counts_all),
        }

    # ---------------------------------------------------------------------------------------
    def _save(self, path: Path, **state: Any) -> None:
        if self.info.is_main:
            save_checkpoint(path, {"version": CHECKPOINT_VERSION, "config": self.cfg.to_dict(), **state})

    def _memory_path(self, t: int) -> Path:
        return self.out / "memory" / f"after_phase_{t + 1:02d}.h5"

    def _update_memory(self, model: IncrementalNet, data: PhaseData, t: int) -> str | None:
        if self.memory is None:
            return None
        phase = self.scenario.phase(t)
        path = self._memory_path(t)
        if self.info.is_main:
            feats = self._extract(model, data.new_x, "features").cpu() if self.cfg.memory_selection == "herding" else None
            gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + t)
            self.memory.update(data.new_x, data.new_y, feats, phase.num_seen, generator=gen)
            self.memory.save(path)
        barrier(self.info)
        if not self.info.is_main:
            self.memory = ExemplarMemory.load(path, expect_class_order=list(self.scenario.class_order))
        return str(path)

    def _restore_memory(self, path: str | None) -> None:
        if self.memory is not None and path:
            self.memory = ExemplarMemory.load(path, expect_class_order=list(self.scenario.class_order))

    # ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        T = self.scenario.num_phases
        start = time.perf_counter()
        model = self._build_model()
        teacher: IncrementalNet | None = None
        resume_state: dict[str, Any] | None = None
        first_phase = 0
        ckpt_path = self.out / CHECKPOINT
        if cfg.resume:
            if not ckpt_path.is_file():
                raise ConfigError(f"--resume {cfg.resume}: no {CHECKPOINT} in that folder; nothing to resume.")
            state = load_checkpoint(ckpt_path)
            model = IncrementalNet.from_checkpoint_state(state["net"])
            self.records = state["records"]
            self.elapsed_before = state["elapsed"]
            self._restore_memory(state["memory_file"])
            if state["phase_complete"]:
                first_phase = state["phase"] + 1
            else:
                first_phase = state["phase"]
                teacher = IncrementalNet.from_checkpoint_state(state["teacher"]) if state["teacher"] else None
                resume_state = state
            self.log(f"resuming {self.out} at phase {first_phase + 1}/{T}"
                     + (f", epoch {state['epochs_done'] + 1}/{cfg.epochs}" if resume_state else ""))
        model = self._prepare_model(model)
        table = PhaseTable(self.log, self.recipe.uses_nme or cfg.nme)
        for rec in self.records:
            table.row(rec)
        for t in range(first_phase, T):
            model, teacher = self._run_phase(t, model, teacher, resume_state, table, start)
            resume_state = None
        wall = self.elapsed_before + time.perf_counter() - start
        result: dict[str, Any] = {}
        if self.info.is_main:
            result = self._final_metrics(model, wall)
            write_reports(self.out, cfg, result, plots=cfg.plots, log=self.log)
            table.summary(result)
        barrier(self.info)
        return result

    def _run_phase(self, t: int, model: IncrementalNet, teacher: IncrementalNet | None,
                   resume_state: dict[str, Any] | None, table: "PhaseTable", run_start: float):
        cfg, T = self.cfg, self.scenario.num_phases
        phase = self.scenario.phase(t)
        phase_start = time.perf_counter()
        if resume_state is None:
            teacher = model.frozen_copy() if t > 0 else None
            torch.manual_seed(cfg.seed * 7919 + t)
            model.expand(phase.num_new)
            model = self._prepare_model(model)
        if teacher is not None:
            teacher = self._prepare_model(teacher).eval()
        gen = torch.Generator().manual_seed(cfg.seed * 104729 + t)
        aug_gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1299709 + t * 31 + self.info.rank)
        data = self._phase_data(t)
        net = self._forward_module(model)
        ctx = self._context(t, model, net, teacher, data)
        per_class_val = self.recipe.validation_per_class(ctx)
        if per_class_val:
            split_gen = torch.Generator().manual_seed(cfg.seed * 15485863 + t)
            train_idx, val_idx = cil_data.balanced_validation_split(data.y.cpu(), per_class_val, split_gen)
            data.train, data.val = train_idx, val_idx
            ctx = self._context(t, model, net, teacher, data)
            ctx.extra.update(val_images=data.x[val_idx.to(self.device)], val_labels=data.y[val_idx.to(self.device)])
        ctx.extra.update(generator=gen, normalize=lambda u: self._to_input(self.augment.normalize(u)))
        self.recipe.start_phase(ctx)
        opt, sched = self._optimizer(model, t)
        ctx.optimizer = opt
        sampler = self._make_sampler(data, t, gen)
        first_epoch = 0
        phase_losses: list[float] = []
        if resume_state is not None:
            opt.load_state_dict(resume_state["optimizer"])
            sched.load_state_dict(resume_state["scheduler"])
            self.recipe.load_state_dict(resume_state["recipe"])
            gen.set_state(resume_state["gen"])
            aug_gen.set_state(resume_state["aug_gen"])
            if sampler is not None and resume_state.get("sampler") is not None:
                sampler[0].load_state_dict(resume_state["sampler"])
            if self.scaler is not None and resume_state.get("scaler"):
                self.scaler.load_state_dict(resume_state["scaler"])
            first_epoch = resume_state["epochs_done"]
            ctx.step = resume_state["step"]
            phase_losses = list(resume_state["phase_losses"])
        self.log(
            f"phase {t + 1}/{T}: classes {phase.num_old}..{phase.num_seen - 1} "
            f"({phase.num_new} new), {int((~data.is_memory).sum())} new images + "
            f"{int(data.is_memory.sum())} exemplars" + (f", {len(data.val)} held out for validation" if len(data.val) else "")
        )
        params = [p for p in model.parameters() if p.requires_grad]
        for epoch in range(first_epoch, cfg.epochs):
            ctx.epoch = epoch
            model.train()
            steps = self._num_steps(data, sampler)
            progress = Progress(steps, f"phase {t + 1}/{T} epoch {epoch + 1:>3}/{cfg.epochs}",
                                cfg.progress if self.info.is_main else "none")
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
            figure_sums: dict[str, Any] = {}
            n_steps = 0
            for pos in self._batches(data, gen, sampler):
                if self.info.enabled:
                    pos = pos[self.info.rank :: self.info.world_size]
                pos = pos.to(self.device)
                xb = self._to_input(self.augment(data.x[pos], generator=aug_gen))
                batch = Batch(x=xb, y=data.y[pos], is_memory=data.is_memory[pos])
                with self._autocast():
                    loss, figures = self.recipe.loss(ctx, batch)
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
                self.recipe.after_step(ctx)
                ctx.step += 1
                n_steps += 1
                loss_sum += loss.detach().double()
                for k, v in figures.items():  # summed on the device: no synchronisation per step
                    figure_sums[k] = figure_sums.get(k, 0.0) + v
                if progress.mode == "bar" and progress.due():
                    progress.update(1, loss=float(loss_sum / n_steps), lr=ctx.current_lr())
                else:
                    progress.update(1)
            mean_loss = float(loss_sum / max(n_steps, 1))
            if not math.isfinite(mean_loss):
                progress.close(loss=mean_loss)
                kept = f"the last good checkpoint is kept in {self.out / CHECKPOINT}" if (self.out / CHECKPOINT).exists() \
                    else "no checkpoint had been written yet"
                raise TrainingDiverged(
                    f"the loss became {mean_loss} in phase {t + 1}, epoch {epoch + 1}; training stopped and {kept}. "
                    "Try a smaller --lr, --amp off, or check the data."
                )
            phase_losses.append(mean_loss)
            means = {k: float(v) / max(n_steps, 1) for k, v in figure_sums.items()}
            progress.close(loss=mean_loss, **means, lr=ctx.current_lr())
            sched.step()
            broadcast_buffers(model, self.info)
            if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0 and epoch + 1 < cfg.epochs:
                self._save(
                    self.out / CHECKPOINT, phase=t, epochs_done=epoch + 1, phase_complete=False,
                    net=model.checkpoint_state(), teacher=teacher.checkpoint_state() if teacher is not None else None,
                    optimizer=opt.state_dict(), scheduler=sched.state_dict(), recipe=self.recipe.state_dict(),
                    gen=gen.get_state(), aug_gen=aug_gen.get_state(),
                    sampler=sampler[0].state_dict() if sampler is not None else None,
                    scaler=self.scaler.state_dict() if self.scaler is not None else None,
                    step=ctx.step, phase_losses=phase_losses, records=self.records,
                    memory_file=self._memory_path(t - 1).as_posix() if (self.memory is not None and t > 0) else None,
                    elapsed=self.elapsed_before + time.perf_counter() - run_start,
                )
        train_seconds = time.perf_counter() - phase_start
        end_figures = self.recipe.end_phase(ctx)
        memory_file = self._update_memory(model, data, t)
        rec = self._evaluate(model, t) if self.info.is_main else {}
        if self.info.is_main:
            self._last_prediction = (rec.pop("_pred"), rec.pop("_target"))
            rec.update(
                phase=t + 1, num_classes=phase.num_seen, num_new=phase.num_new,
                train_images=int((~data.is_memory).sum()), exemplars=int(data.is_memory.sum()),
                memory_after=len(self.memory) if self.memory is not None else 0,
                epoch_losses=phase_losses, seconds=time.perf_counter() - phase_start, train_seconds=train_seconds,
                **{k: float(v) for k, v in end_figures.items()},
            )
            self.records.append(rec)
            table.row(rec)
        self._save(
            self.out / CHECKPOINT, phase=t, epochs_done=cfg.epochs, phase_complete=True,
            net=model.checkpoint_state(), teacher=None, optimizer=None, scheduler=None, recipe=self.recipe.state_dict(),
            gen=None, aug_gen=None, sampler=None, scaler=None, step=ctx.step, phase_losses=phase_losses,
            records=self.records, memory_file=memory_file,
            elapsed=self.elapsed_before + time.perf_counter() - run_start,
        )
        if self.info.is_main and self.memory is not None and t > 0:
            self._memory_path(t - 1).unlink(missing_ok=True)
        if self.info.is_main:
            atomic_write_json(self.out / "metrics.json", {"complete": False, "phases": self.records})
        return model, teacher

    def _final_metrics(self, model: IncrementalNet, wall: float) -> dict[str, Any]:
        """The summary of ``metrics.json`` (METHODS.md §6) from the per-phase records."""
        T = self.scenario.num_phases
        recs = self.records
        acc = [r["acc"] for r in recs]
        matrix = [r["task_acc"] + [None] * (T - len(r["task_acc"])) for r in recs]
        out: dict[str, Any] = {
            "complete": True,
            "method": self.cfg.method,
            "data": self.dataset.name,
            "num_phases": T,
            "increments": list(self.scenario.increments),
            "class_order": [int(c) for c in self.scenario.class_order],
            "class_names": [self.dataset.class_names[c] for c in self.scenario.class_order],
            "train_counts": [int(c) for c in self.train_counts_all],
            "acc_per_phase": acc,
            "avg_inc_acc": M.average_incremental_accuracy(acc),
            "last_acc": acc[-1],
            "acc_matrix": matrix,
            "forgetting": M.forgetting(matrix),
            "old_acc": [r["old_acc"] for r in recs],
            "new_acc": [r["new_acc"] for r in recs],
            "imbalance_score": [r["imbalance_score"] for r in recs],
            "many_medium_few": [r["many_medium_few"] for r in recs],
        }
        if any(r.get("nme") for r in recs):
            nme_acc = [r["nme"]["acc"] if r.get("nme") else None for r in recs]
            known = [a for a in nme_acc if a is not None]
            out["nme"] = {"acc_per_phase": nme_acc, "avg_inc_acc": sum(known) / len(known) if known else None,
                          "last_acc": nme_acc[-1]}
        if self.info.is_main:
            if self._last_prediction is None:  # a resumed run whose phases were all done already
                final = self._evaluate(model, T - 1)
                self._last_prediction = (final["_pred"], final["_target"])
            pred, target = self._last_prediction
            out["confusion_matrix"] = M.confusion_matrix(pred, target, model.num_classes).tolist()
            out["weight_norms"] = [float(v) for v in model.head.weight_norms()]
            out["memory_per_class"] = (
                [int(v) for v in self.memory.class_counts(model.num_classes)] if self.memory is not None else []
            )
        out["phase_seconds"] = [r["seconds"] for r in recs]
        out["wall_seconds"] = wall
        out["phases"] = recs
        return out
