"""cil-losses on CPU: each loss vs F.cross_entropy, fused task-wise KD vs a per-slice loop, vectorised DGR vs per-row.

Forward + backward, batch 256 (``--batch``), C = 100 and 1000 classes (``--classes``). Every figure is a
ratio against a plain reference timed in the same run, round-robin (median of ``--repeats`` rounds
after warm-up), so that the noise of a shared machine hits both sides alike.

    hatch run bench losses                  # full tables (about two minutes)
    python tools/bench.py losses --sections step      # only table 4: DGR in a whole ResNet-32 training step
    hatch run bench losses --quick          # a few-second smoke run
    python tools/bench.py losses --json out.json
    python tools/bench.py losses --sections dgr --classes 1000 --breakdown   # only section 3, with 3b
    python tools/bench.py losses --repeats 21 --breakdown --runs 7   # the package README's tables

``--breakdown`` adds table 3b: the parts of the vectorised DGR step (CE + DAKD, largest C) timed in one
race with the per-row step, including the arithmetic floor (the two losses plus the layer's four bare
matrix products) that bounds any vectorised layer's speed-up; and table 3c: the vectorised step timed
right after different kinds of work (itself, pure Python, a cache-evicting memory sweep, the per-row
step), which shows what the order of the calls in a race costs it.

``--runs N`` measures everything N times in a row and prints, per figure, the median over the runs and
its range: on a shared machine a single run's ratios move by 10-15 %.

Section ``step`` (table 4) times a whole training step of ResNet-32 at batch 128 (``--step-batch``): forward,
teacher forward, losses, backward, DGR reweighting, SGD step, with DGR (``GradientReweighter`` + regularised
softmax + DAKD) against the same step with plain CE + KD, side by side: ``--step-pairs`` pairs of rounds, each
pair running the two steps in both orders; the median over the pairs of each pair's ratio.

Goals (issue 3): BalancedS-CE ≤ 1.3× CE; fused task-wise KD ≥ 3× faster than the loop at 50 tasks;
vectorised DGR step ≥ 10× faster than the per-row reference at C = 1000. Issue 18: DGR's whole training step
(ResNet-32, batch 128) ≤ 1.10× the CE + KD step at C = 100 and C = 1000.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import importlib.util
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "packages" / "cil-losses"

try:
    import cil_losses as L
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(PACKAGE / "src"))
    import cil_losses as L


def _references():
    path = PACKAGE / "tests" / "references.py"
    spec = importlib.util.spec_from_file_location("cil_losses_bench_references", path)
    if spec is None or spec.loader is None or not path.exists():
        raise SystemExit(f"bench_losses needs the reference implementations at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def race(candidates: dict[str, Callable[[], object]], repeats: int, target_s: float = 0.005) -> dict[str, float]:
    """Median seconds per call of each candidate, timed round-robin (in a shuffled order each round).

    After two warm-up calls, each candidate is called ``inner`` times per round, with ``inner`` chosen
    so that a round lasts about ``target_s`` (short calls are averaged over many repetitions).
    """
    inner: dict[str, int] = {}
    for name, fn in candidates.items():
        fn()
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        inner[name] = max(1, min(200, round(target_s / once)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates.items())
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)  # no candidate always runs right after the same neighbour
        for name, fn in order:
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def steady_malloc() -> bool:
    """Keep freed memory in the process (glibc only): no heap trimming, no mmap for blocks < 64 MiB.

    With glibc's defaults, 1 MiB activation buffers are returned to the OS and page-faulted back in
    from one call to the next depending on what ran before; on a shared machine that made the ratio of
    two losses doing nearly the same work vary by 2× between runs. A training process with a large
    heap is in the steady state this setting gives. Returns whether it was applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 256 << 20)) and bool(libc.mallopt(m_mmap_threshold, 64 << 20))
    except (OSError, AttributeError):
        return False


def _fwd_bwd(loss_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        loss_fn(z).backward()
        z.grad = None
    return run


# --------------------------------------------------------------------------- 1. each loss vs CE
def bench_losses(batch: int, classes: int, tasks: int, repeats: int, target_s: float) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    num_old = classes // 2
    boundaries = list(range(0, num_old + 1, max(1, num_old // tasks)))[: tasks + 1]
    num_old = boundaries[-1]
    z = (torch.randn(batch, classes, generator=g) * 3).requires_grad_()
    teacher = torch.randn(batch, num_old, generator=g) * 3
    is_replay = torch.arange(batch) % 5 == 0
    y = torch.where(is_replay, torch.randint(0, num_old, (batch,), generator=g),
                    torch.randint(num_old, classes, (batch,), generator=g))
    counts = torch.randint(1, 500, (classes,), generator=g).float()
    offsets = counts.log()
    lost = torch.randint(0, 400, (num_old,), generator=g).float()
    balanced_module = L.nn.BalancedSoftmaxCE(counts, num_old=num_old, alpha=0.5)
    candidates = {
        "cross_entropy (reference)": lambda x: F.cross_entropy(x, y),
        "logit_adjusted_cross_entropy": lambda x: L.logit_adjusted_cross_entropy(x, y, offsets),
        "balanced_softmax_cross_entropy": lambda x: L.balanced_softmax_cross_entropy(x, y, counts, num_old, 0.5),
        "nn.BalancedSoftmaxCE (cached offsets)": lambda x: balanced_module(x, y),
        "separated_softmax_cross_entropy": lambda x: L.separated_softmax_cross_entropy(x, y, num_old, is_replay),
        "kd_loss (old classes)": lambda x: L.kd_loss(x[:, :num_old], teacher, 2.0),
        f"task_wise_kd ({tasks} tasks)": lambda x: L.task_wise_kd(x, teacher, boundaries),
        f"output_coordination_kd ({tasks} tasks)": lambda x: L.output_coordination_kd(x, teacher, boundaries),
        f"segmented_log_softmax ({tasks} tasks)": lambda x: L.segmented_log_softmax(x[:, :num_old], boundaries).sum(),
        "input_coordination_ce": lambda x: L.input_coordination_ce(x, y),
        "new_head_suppression": lambda x: L.new_head_suppression(x, is_replay, num_old),
        "jioc_loss": lambda x: L.jioc_loss(x, y, teacher, boundaries, is_replay),
        "dakd_loss": lambda x: L.dakd_loss(x[:, :num_old], teacher, lost),
    }
    times = race({name: _fwd_bwd(fn, z) for name, fn in candidates.items()}, repeats, target_s)
    base = times["cross_entropy (reference)"]
    return [{"loss": name, "classes": classes, "seconds": t, "ratio_to_ce": t / base} for name, t in times.items()]


# --------------------------------------------------------------------------- 2. fused vs looped task-wise KD
def bench_task_wise_kd(batch: int, classes: int, tasks: int, repeats: int, target_s: float, ref) -> dict:
    g = torch.Generator().manual_seed(1)
    width = classes // tasks
    boundaries = [s * width for s in range(tasks + 1)]
    z = (torch.randn(batch, classes, generator=g) * 3).requires_grad_()
    teacher = torch.randn(batch, boundaries[-1], generator=g) * 3
    times = race({
        "loop": _fwd_bwd(lambda x: ref.task_wise_kd_loop_fast(x, teacher, boundaries), z),
        "fused": _fwd_bwd(lambda x: L.task_wise_kd(x, teacher, boundaries), z),
    }, repeats, target_s)
    return {"classes": classes, "tasks": tasks, "loop_s": times["loop"], "fused_s": times["fused"],
            "speedup": times["loop"] / times["fused"]}


# --------------------------------------------------------------------------- 3. vectorised vs per-row DGR step
class DGRScenario(NamedTuple):
    """The inputs of one classifier step of section 3 (seeded; also used by ``bench_dgr_ab``): ten parameter
    blocks of ``classes // 10`` rows, the last one new; features ``h``, targets, teacher logits of the old
    classes, log-prior offsets and lost counts. ``generator`` continues the seeded stream."""

    sizes: list[int]
    num_old: int
    n_seen: float
    n_new: float
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    h: torch.Tensor
    y: torch.Tensor
    teacher: torch.Tensor
    offsets: torch.Tensor
    lost: torch.Tensor
    generator: torch.Generator

    def clear(self) -> None:
        """Drop the gradients of the blocks and of ``h`` (each step starts from ``.grad = None``)."""
        for p in (*self.weights, *self.biases, self.h):
            p.grad = None


def dgr_scenario(batch: int, classes: int, dim: int) -> DGRScenario:
    g = torch.Generator().manual_seed(2)
    num_blocks = 10
    sizes = [classes // num_blocks] * num_blocks
    num_old = sum(sizes[:-1])
    weights = [(torch.randn(n, dim, generator=g) * 0.1).requires_grad_() for n in sizes]
    biases = [torch.zeros(n).requires_grad_() for n in sizes]
    h = torch.randn(batch, dim, generator=g).requires_grad_()
    y = torch.randint(0, classes, (batch,), generator=g)
    teacher = torch.randn(batch, num_old, generator=g)
    offsets = (torch.rand(classes, generator=g) + 0.01).log()
    lost = torch.randint(0, 400, (num_old,), generator=g).float()
    return DGRScenario(sizes, num_old, 20.0 * num_old, 100.0 * sizes[-1], weights, biases, h, y, teacher,
                       offsets, lost, g)


def _dgr_step_candidates(batch: int, classes: int, dim: int, ref, losses_kind: str) -> dict[str, Callable[[], None]]:
    """The classifier steps of section 3 as zero-argument callables (see :func:`bench_dgr`).

    ``per_row`` and ``vectorised`` are what section 3 compares; the others split the vectorised step
    (:func:`bench_dgr_breakdown`): ``no_reweighting`` is the same layer with the reweighting of the row
    gradients skipped (its two matrix products for ``∂L_CE/∂W`` and ``∂L_KD/∂W`` kept), ``plain`` the step
    with ``F.linear`` and no reweighting at all (three matrix products), ``losses`` the two losses'
    forward and backward on a leaf ``[B, C]`` tensor, ``matmuls`` the four bare matrix products of the
    vectorised layer on detached tensors (forward ``h·Wᵀ + b``; backward ``G·W``, ``G_CEᵀ·h``, ``G_KDᵀ·h``).
    """
    scenario = dgr_scenario(batch, classes, dim)
    g, num_old, n_seen, n_new = scenario.generator, scenario.num_old, scenario.n_seen, scenario.n_new
    weights, biases, h, y = scenario.weights, scenario.biases, scenario.h, scenario.y
    teacher, offsets, lost = scenario.teacher, scenario.offsets, scenario.lost
    kd_weight = L.dgr_kd_weight(n_seen, n_new)
    gamma = L.dgr_attenuation_gamma(n_seen, n_new)

    direction_ce = torch.randn(batch, classes, generator=g) / batch
    direction_kd = torch.randn(batch, num_old, generator=g) / batch

    def losses(z_ce, z_kd):
        if losses_kind == "linear":
            return (z_ce * direction_ce).sum(), (z_kd[:, :num_old] * direction_kd).sum()
        ce = L.logit_adjusted_cross_entropy(z_ce, y, offsets)          # as the cil-train DGR recipe
        return ce, kd_weight * 4.0 * L.dakd_loss(z_kd[:, :num_old], teacher, lost)

    reweighter = L.GradientReweighter(phi_dtype=torch.float32)
    reweighter.start_phase(classes, num_old, n_seen, n_new)
    unweighted = L.GradientReweighter(phi_dtype=torch.float32)
    unweighted.start_phase(classes, num_old, n_seen, n_new)
    # benchmark-only: the row gradients go through unchanged (no Φ, ratios or rewrite)
    unweighted._reweight = lambda ce_rows, ce_bias, kd_rows, kd_bias, in_place: (ce_rows, ce_bias)
    phi = [0.0] * classes

    clear = scenario.clear

    def vectorised(layer=reweighter) -> None:
        clear()
        z_ce, z_kd = layer(h, torch.cat(weights), torch.cat(biases))
        ce, kd = losses(z_ce, z_kd)
        (ce + kd).backward()

    def per_row() -> None:
        clear()
        ref.reference_dgr_step(h, weights, biases, lambda z: losses(z, z), phi=phi, num_old=num_old, gamma=gamma)

    def plain() -> None:
        clear()
        z = F.linear(h, torch.cat(weights), torch.cat(biases))
        ce, kd = losses(z, z)
        (ce + kd).backward()

    logits = F.linear(h, torch.cat(weights), torch.cat(biases)).detach()

    def losses_only() -> None:
        z = logits.clone().requires_grad_()
        ce, kd = losses(z, z)
        (ce + kd).backward()

    h_, w_, b_ = h.detach(), torch.cat(weights).detach(), torch.cat(biases).detach()
    grad_ce, grad_kd = direction_ce, direction_kd

    def matmuls() -> None:
        F.linear(h_, w_, b_)
        grad_ce.mm(w_)
        grad_ce.t().mm(h_)
        grad_kd.t().mm(h_)

    return {"per_row": per_row, "vectorised": vectorised, "no_reweighting": lambda: vectorised(unweighted),
            "plain": plain, "losses": losses_only, "matmuls": matmuls}


def bench_dgr(batch: int, classes: int, dim: int, repeats: int, target_s: float, ref, losses_kind: str = "dakd") -> dict:
    """One training step of the classifier: forward, losses, backward with the reweighted FC gradients.

    ``losses_kind="dakd"``: the real DGR losses (CE with log-prior offsets + λ_KD·T²·DAKD), whose cost
    both sides share. ``"linear"``: surrogate losses ``Σ z⊙A`` with fixed random ``A`` (nearly free), so
    that the classifier layer's matrix products and the reweighting dominate.
    """
    steps = _dgr_step_candidates(batch, classes, dim, ref, losses_kind)
    times = race({"per_row": steps["per_row"], "vectorised": steps["vectorised"]}, repeats, target_s)
    return {"classes": classes, "feature_dim": dim, "losses": losses_kind, "per_row_s": times["per_row"],
            "vectorised_s": times["vectorised"], "speedup": times["per_row"] / times["vectorised"]}


BREAKDOWN = {
    "per_row": "per-row reference step",
    "vectorised": "vectorised step (GradientReweighter)",
    "no_reweighting": "same layer, row gradients not reweighted",
    "plain": "F.linear step, no reweighting (3 matmuls)",
    "losses": "the two losses alone (fwd+bwd on a leaf)",
    "matmuls": "the 4 bare matmuls of the layer",
}


def bench_dgr_breakdown(batch: int, classes: int, dim: int, repeats: int, target_s: float, ref) -> list[dict]:
    """Where the vectorised step's time goes (CE + DAKD): the step and its parts, timed in one race.

    ``losses + matmuls`` is the arithmetic that no implementation of the layer avoids (the per-row
    procedure runs the same losses and five matrix products of the same size); ``per_row / (losses +
    matmuls)`` bounds the speed-up any vectorised layer could show in this setting.
    """
    steps = _dgr_step_candidates(batch, classes, dim, ref, "dakd")
    times = race(steps, repeats, target_s)
    return [{"classes": classes, "part": name, "seconds": t, "per_row_ratio": times["per_row"] / t}
            for name, t in times.items()]


AFTER = {
    "nothing": "right after another vectorised step (back to back)",
    "python": "after ~25 ms of pure Python (integer arithmetic)",
    "sweep": "after writing a 64 MiB buffer (data caches evicted)",
    "per_row": "after the per-row step (the order of table 3)",
}


def bench_dgr_after_other_work(batch: int, classes: int, dim: int, repeats: int, ref) -> list[dict]:
    """The vectorised step (CE + DAKD) timed one call at a time right after different kinds of work.

    Table 3 races two candidates whose calls take ~90 and ~9 ms, so every timed vectorised call comes
    right after a per-row call; in table 3b it comes after one of five other candidates. Here the work
    before each timed call is chosen: the same step (everything warm), pure Python that touches almost no
    tensor data, a sweep that evicts the data caches, or the per-row step; the per-row step itself is
    timed in the same rounds (it then follows a vectorised call). The conditions run in a shuffled order
    each round.
    """
    steps = _dgr_step_candidates(batch, classes, dim, ref, "dakd")
    vectorised, per_row = steps["vectorised"], steps["per_row"]
    sweep_buffer = torch.empty(16 << 20)

    def python_work() -> int:
        total = 0
        for i in range(200_000):
            total += i * i
        return total

    before: dict[str, Callable[[], object]] = {"nothing": vectorised, "python": python_work,
                                               "sweep": lambda: sweep_buffer.fill_(1.0), "per_row": per_row}
    samples: dict[str, list[float]] = {name: [] for name in before}
    per_row_times: list[float] = []
    vectorised()
    per_row()
    order = list(before.items())
    shuffle = random.Random(1).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name, work in order:
            start = time.perf_counter()
            work()
            if name == "per_row":
                per_row_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            vectorised()
            samples[name].append(time.perf_counter() - start)
    per_row_s = statistics.median(per_row_times)
    return [{"classes": classes, "before": name, "seconds": statistics.median(v),
             "per_row_ratio": per_row_s / statistics.median(v)} for name, v in samples.items()]


def bench_dgr_rewrite(classes: int, dim: int, repeats: int, target_s: float, ref) -> dict:
    """Only the part that is vectorised: given this step's CE/KD row gradients, update Φ, compute the
    ratios and write every FC row's gradient (per-row loop vs :meth:`GradientReweighter.reweight_row_gradients`)."""
    g = torch.Generator().manual_seed(3)
    num_blocks = 10
    sizes = [classes // num_blocks] * num_blocks
    num_old = sum(sizes[:-1])
    weights = [torch.zeros(n, dim, requires_grad=True) for n in sizes]
    biases = [torch.zeros(n, requires_grad=True) for n in sizes]
    ce_w = [torch.randn(n, dim, generator=g) for n in sizes]
    ce_b = [torch.randn(n, generator=g) for n in sizes]
    kd_w = [torch.randn(n, dim, generator=g) for n in sizes[:-1]] + [torch.zeros(sizes[-1], dim)]
    kd_b = [torch.randn(n, generator=g) for n in sizes[:-1]] + [torch.zeros(sizes[-1])]
    ce_rows, ce_bias = torch.cat(ce_w), torch.cat(ce_b)          # the layer's backward has them as one tensor
    kd_rows, kd_bias = torch.cat(kd_w)[:num_old], torch.cat(kd_b)[:num_old]
    n_seen, n_new = 20.0 * num_old, 100.0 * sizes[-1]
    gamma = L.dgr_attenuation_gamma(n_seen, n_new)
    reweighter = L.GradientReweighter(phi_dtype=torch.float32)
    reweighter.start_phase(classes, num_old, n_seen, n_new)
    phi = [0.0] * classes
    for p in (*weights, *biases):
        p.grad = torch.zeros_like(p)

    def per_row() -> None:
        ref.reference_dgr_rewrite(weights, biases, ce_w, ce_b, kd_w, kd_b, phi=phi, num_old=num_old, gamma=gamma)

    def vectorised() -> None:
        grad_w, grad_b = reweighter.reweight_row_gradients(ce_rows, ce_bias, kd_rows, kd_bias)
        for p, gw in zip(weights, grad_w.split(sizes)):
            p.grad = gw
        for p, gb in zip(biases, grad_b.split(sizes)):
            p.grad = gb

    times = race({"per_row": per_row, "vectorised": vectorised}, repeats, target_s)
    return {"classes": classes, "feature_dim": dim, "losses": "rewrite", "per_row_s": times["per_row"],
            "vectorised_s": times["vectorised"], "speedup": times["per_row"] / times["vectorised"]}


# --------------------------------------------------------------------------- 4. DGR in a whole training step
class _BasicBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                torch.nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(torch.nn.Module):
    """The CIFAR ResNet of He et al. (6n + 2 layers: 16/32/64 channels, ``n`` basic blocks per stage; n = 5 is
    ResNet-32, 0.46 M parameters), a 64-d feature vector and a linear head. Written here so that the benchmark
    needs torch only."""

    def __init__(self, num_classes: int, n: int = 5) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(16),
                                        torch.nn.ReLU())
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = torch.nn.Sequential(*blocks)
        self.head = torch.nn.Linear(64, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _step_candidates(batch: int, classes: int, depth_n: int) -> dict[str, Callable[[], None]]:
    """The two training steps of table 4 on the same batch: ``plain`` (CE + KD) and ``dgr``.

    The last phase of 10 tasks (``num_old = 0.9·C``), a long-tailed phase (memory of 20 per old class, new classes
    500 → 5), ResNet-32 student and teacher (the teacher frozen, eval mode, forward under ``no_grad`` in both), SGD
    with momentum 0.9 and weight decay 5e-4. Each step has its own copy of the student and its own optimiser.
    """
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    num_old = classes * 9 // 10
    num_new = classes - num_old
    T = 2.0
    student = CifarResNet(classes, depth_n)
    teacher = CifarResNet(num_old, depth_n).eval().requires_grad_(False)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    original = torch.full((num_old,), 500.0)
    memory = torch.full((num_old,), 20.0)
    new_counts = torch.tensor([max(5.0, 500.0 * 100 ** (-i / max(1, num_new - 1))) for i in range(num_new)])
    counts = torch.cat([memory, new_counts])
    n_seen, n_new = float(original.sum()), float(new_counts.sum())
    kd_weight = L.dgr_kd_weight(n_seen, n_new)
    offsets = L.regularized_softmax_offsets(counts)
    lost = original - memory
    models = {"plain": student, "dgr": copy.deepcopy(student)}
    optimisers = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
                  for name, m in models.items()}
    reweighter = L.GradientReweighter()
    reweighter.start_phase(classes, num_old, n_seen, n_new)

    def plain() -> None:
        model, opt = models["plain"], optimisers["plain"]
        logits = model(x)
        with torch.no_grad():
            soft = F.softmax(teacher(x) / T, dim=1)
        kd = -(soft * F.log_softmax(logits[:, :num_old] / T, dim=1)).sum(dim=1).mean()
        loss = F.cross_entropy(logits, y) + kd_weight * T * T * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def dgr() -> None:
        model, opt = models["dgr"], optimisers["dgr"]
        z_ce, z_kd = reweighter(model.features(x), model.head.weight, model.head.bias)
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = (L.logit_adjusted_cross_entropy(z_ce, y, offsets)
                + kd_weight * T * T * L.dakd_loss(z_kd, teacher_logits, lost, T))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"plain": plain, "dgr": dgr}


def bench_step(batch: int, classes: int, pairs: int, depth_n: int = 5) -> dict:
    """DGR's whole training step / the CE + KD step, paired: each pair of rounds times the two steps in both
    orders (CE + KD first, then DGR first), so that whatever the first or second call of a round pays cancels;
    the pair's ratio is the geometric mean of its two rounds' ratios. Reported: the median pair ratio, its range,
    and the median step times."""
    steps = _step_candidates(batch, classes, depth_n)
    for fn in steps.values():                                     # warm-up (allocator, autograd, kernels)
        fn()
        fn()
    times: dict[str, list[float]] = {"plain": [], "dgr": []}
    ratios = []
    for _ in range(pairs):
        pair = 1.0
        for order in (("plain", "dgr"), ("dgr", "plain")):
            this = {}
            for name in order:
                start = time.perf_counter()
                steps[name]()
                this[name] = time.perf_counter() - start
                times[name].append(this[name])
            pair *= this["dgr"] / this["plain"]
        ratios.append(pair ** 0.5)
    return {"classes": classes, "batch": batch, "depth": 6 * depth_n + 2, "pairs": pairs,
            "plain_s": statistics.median(times["plain"]), "dgr_s": statistics.median(times["dgr"]),
            "ratio": statistics.median(ratios), "ratio_round_min": min(ratios), "ratio_round_max": max(ratios)}


# --------------------------------------------------------------------------- report
SECTIONS = ("losses", "kd", "dgr", "step")
LEVELS = {
    "dakd": "full step, CE + DAKD",
    "linear": "full step, linear losses",
    "rewrite": "FC gradient rewrite only",
}


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    if not rows:  # section not run (--sections)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


#: per section: the figure that a goal or a reader compares (its range is reported over the runs)
_METRIC = {"losses": "ratio_to_ce", "task_wise_kd": "speedup", "dgr": "speedup", "dgr_breakdown": "per_row_ratio",
           "dgr_floor": "per_row_ratio", "dgr_after": "per_row_ratio", "step": "ratio"}


def _measure(args: argparse.Namespace, ref, target: float) -> dict[str, list[dict]]:
    """One measurement of every section asked for (the tables of one run)."""
    out: dict[str, list[dict]] = {name: [] for name in _METRIC}
    if "losses" in args.sections:
        out["losses"] = [r for c in args.classes for r in bench_losses(args.batch, c, 10, args.repeats, target)]
    if "kd" in args.sections:
        out["task_wise_kd"] = [bench_task_wise_kd(args.batch, c, t, args.repeats, target, ref)
                               for c in args.classes for t in args.tasks]
    if "dgr" in args.sections:
        out["dgr"] = [bench_dgr(args.batch, c, args.feature_dim, args.repeats, target, ref, kind)
                      for kind in ("dakd", "linear") for c in args.classes]
        out["dgr"] += [bench_dgr_rewrite(c, args.feature_dim, args.repeats, target, ref) for c in args.classes]
        if args.breakdown:
            rows = bench_dgr_breakdown(args.batch, max(args.classes), args.feature_dim, args.repeats, target, ref)
            out["dgr_breakdown"] = rows
            by_part = {r["part"]: r["seconds"] for r in rows}
            floor = by_part["losses"] + by_part["matmuls"]
            out["dgr_floor"] = [{"classes": rows[0]["classes"], "seconds": floor,
                                 "per_row_ratio": by_part["per_row"] / floor}]
            out["dgr_after"] = bench_dgr_after_other_work(args.batch, max(args.classes), args.feature_dim,
                                                          args.repeats, ref)
    if "step" in args.sections:
        out["step"] = [bench_step(args.step_batch, c, args.step_pairs, args.step_depth_n) for c in args.step_classes]
    return out


def _aggregate(runs: list[dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """Row by row over the runs: the median of every number, and the range of the compared figure
    (``<metric>_min`` / ``<metric>_max``). Every run produces the same rows in the same order."""
    out: dict[str, list[dict]] = {}
    for section, metric in _METRIC.items():
        rows = []
        for i, first in enumerate(runs[0][section]):
            same = [run[section][i] for run in runs]
            row = {k: (statistics.median(r[k] for r in same) if isinstance(v, float) else v) for k, v in first.items()}
            values = [r[metric] for r in same]
            row[f"{metric}_min"], row[f"{metric}_max"] = min(values), max(values)
            rows.append(row)
        out[section] = rows
    return out


def _goals(tables: dict[str, list[dict]]) -> list[tuple[str, bool]]:
    goals = []
    balanced = [r for r in tables["losses"] if r["loss"] == "balanced_softmax_cross_entropy"]
    if balanced:
        goals.append(("BalancedS-CE <= 1.3x CE", all(r["ratio_to_ce"] <= 1.3 for r in balanced)))
    kd50 = [r for r in tables["task_wise_kd"] if r["tasks"] == 50]
    if kd50:
        goals.append(("fused task-wise KD >= 3x loop at 50 tasks", all(r["speedup"] >= 3 for r in kd50)))
    for kind, label in LEVELS.items():
        rows = [r for r in tables["dgr"] if r["classes"] == 1000 and r["losses"] == kind]
        if rows:
            goals.append((f"vectorised DGR >= 10x per-row at C=1000 ({label})", all(r["speedup"] >= 10 for r in rows)))
    for r in tables["step"]:
        goals.append((f"DGR whole step <= 1.10x CE+KD step at C={r['classes']}", r["ratio"] <= 1.10))
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench losses", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run (C=100 only, few repeats)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50], help="task counts for fused vs loop KD")
    parser.add_argument("--feature-dim", type=int, default=64, help="feature size of the DGR classifier")
    parser.add_argument("--repeats", type=int, default=15, help="rounds per comparison (median reported)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measure everything this many times, one after the other, and report per figure the "
                             "median over the runs and its range (min-max); goals are judged on the medians")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier ratios)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="which tables to run: losses (1), kd (2), dgr (3); default all")
    parser.add_argument("--breakdown", action="store_true",
                        help="with section dgr: also time the parts of the vectorised step (CE + DAKD, largest C)")
    parser.add_argument("--step-classes", type=int, nargs="+", default=[100, 1000],
                        help="section step: numbers of classes (default 100 and 1000)")
    parser.add_argument("--step-batch", type=int, default=128, help="section step: batch size (default 128)")
    parser.add_argument("--step-pairs", type=int, default=5,
                        help="section step: pairs of rounds, each timing both steps in both orders (default 5)")
    parser.add_argument("--step-depth-n", type=int, default=5,
                        help="section step: basic blocks per stage of the CIFAR ResNet (5: ResNet-32)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator settings alone (default: steady_malloc(), see its docstring)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    steady = False if args.default_malloc else steady_malloc()
    if args.quick:
        args.classes, args.tasks, args.repeats = [100], [10], 3
        args.step_classes, args.step_batch, args.step_pairs, args.step_depth_n = [100], 8, 1, 1
    torch.set_num_threads(args.threads)
    ref = _references()
    target = 0.001 if args.quick else 0.005

    runs = []
    for i in range(args.runs):
        if args.runs > 1:
            print(f"run {i + 1} of {args.runs} ...", file=sys.stderr, flush=True)
        runs.append(_measure(args, ref, target))
    tables = _aggregate(runs) if args.runs > 1 else runs[0]

    def ratio(row: dict, metric: str, digits: int = 2) -> str:
        text = f"{row[metric]:.{digits}f}x"
        if args.runs > 1:
            text += f" ({row[metric + '_min']:.{digits}f}-{row[metric + '_max']:.{digits}f})"
        return text

    spread = f"; median over {args.runs} runs (range)" if args.runs > 1 else ""
    print(f"cil-losses on CPU, torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"forward+backward, median of {args.repeats} round-robin rounds, "
          f"{'steady' if steady else 'default'} malloc{spread}")
    by_loss: dict[str, dict[int, dict]] = {}
    for r in tables["losses"]:
        by_loss.setdefault(r["loss"], {})[r["classes"]] = r
    _print_table("1. time / F.cross_entropy on the same logits",
                 ["loss"] + [f"C={c}" for c in args.classes],
                 [[name] + [ratio(rows[c], "ratio_to_ce") for c in args.classes] for name, rows in by_loss.items()])
    _print_table("2. task-wise KD: per-slice Python loop vs fused",
                 ["C", "tasks", "loop ms", "fused ms", "speed-up"],
                 [[str(r["classes"]), str(r["tasks"]), f"{r['loop_s'] * 1e3:.3f}", f"{r['fused_s'] * 1e3:.3f}",
                   ratio(r, "speedup", 1)] for r in tables["task_wise_kd"]])
    _print_table(f"3. DGR classifier step (10 parameter blocks, D={args.feature_dim}): per-row reference vs vectorised",
                 ["losses", "C", "per-row ms", "vectorised ms", "speed-up"],
                 [[LEVELS[r["losses"]], str(r["classes"]),
                   f"{r['per_row_s'] * 1e3:.2f}", f"{r['vectorised_s'] * 1e3:.3f}", ratio(r, "speedup", 1)]
                  for r in tables["dgr"]])
    if tables["dgr_breakdown"]:
        rows = [[BREAKDOWN[r["part"]], f"{r['seconds'] * 1e3:.3f}", ratio(r, "per_row_ratio", 1)]
                for r in tables["dgr_breakdown"]]
        floor = tables["dgr_floor"][0]
        rows.append(["losses + matmuls (arithmetic floor)", f"{floor['seconds'] * 1e3:.3f}",
                     ratio(floor, "per_row_ratio", 1)])
        _print_table(f"3b. DGR step at C={floor['classes']}, CE + DAKD: parts of the vectorised step, "
                     f"one race", ["what is timed", "ms", "per-row / this"], rows)
        _print_table(f"3c. the vectorised step at C={floor['classes']} (CE + DAKD) timed right after other work",
                     ["timed call", "ms", "per-row / this"],
                     [[AFTER[r["before"]], f"{r['seconds'] * 1e3:.3f}", ratio(r, "per_row_ratio", 1)]
                      for r in tables["dgr_after"]])

    if tables["step"]:
        depth = tables["step"][0]["depth"]
        _print_table(f"4. DGR in a whole training step (ResNet-{depth}, batch {args.step_batch}: forward, teacher "
                     f"forward, losses, backward, reweighting, SGD step) vs the same step with CE + KD; "
                     f"median over {args.step_pairs} pairs of rounds (both orders)",
                     ["C", "CE + KD ms", "DGR ms", "DGR / CE+KD", "range over pairs"],
                     [[str(r["classes"]), f"{r['plain_s'] * 1e3:.1f}", f"{r['dgr_s'] * 1e3:.1f}", ratio(r, "ratio", 3),
                       f"{r['ratio_round_min']:.3f}-{r['ratio_round_max']:.3f}"] for r in tables["step"]])
        per_row = {r["classes"]: r for r in tables["dgr"] if r["losses"] == "dakd"}
        if per_row:
            print("   beside it, table 3 (classifier step alone, CE + DAKD): vectorised DGR is "
                  + ", ".join(f"{ratio(r, 'speedup', 1)} faster than per-row at C={c}" for c, r in per_row.items()))

    goals = _goals(tables)
    per_run = [dict(_goals(run)) for run in runs]

    def verdict(name: str, ok: bool) -> str:
        text = "met" if ok else "NOT met"
        if args.runs > 1:
            text += f" (median; met in {sum(run[name] for run in per_run)} of {args.runs} runs)"
        return text

    print("\ngoals: " + "; ".join(f"{name}: {verdict(name, ok)}" for name, ok in goals))

    if args.json:
        payload = {
            "torch": torch.__version__, "threads": args.threads, "batch": args.batch, "repeats": args.repeats,
            "runs": args.runs, "steady_malloc": steady,
            "losses": tables["losses"], "task_wise_kd": tables["task_wise_kd"], "dgr": tables["dgr"],
            "dgr_breakdown": tables["dgr_breakdown"], "dgr_floor": tables["dgr_floor"], "dgr_after": tables["dgr_after"],
            "step": tables["step"],
            "goals": {name: ok for name, ok in goals},
            "goals_met_in_runs": {name: sum(run[name] for run in per_run) for name, _ in goals},
        }
        if args.runs > 1:
            payload["per_run"] = runs
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
