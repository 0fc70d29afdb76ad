"""Evaluation of a phase (CNN and nearest-mean-of-exemplars accuracy) and the run's summary metrics."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator

import torch

from cil_data import ExemplarMemory, IncrementalScenario
from cil_models import IncrementalNet, NMEClassifier, fold_batch_norms

from . import metrics as M

__all__ = ["Extractor", "FrozenFeatures", "evaluate_phase", "run_summary"]


class Extractor:
    """Features or logits of uint8 images in eval mode, in batches of ``batch_size`` (no graph).

    ``what="both"`` gives the pair ``(logits, features)`` from one forward (the evaluation of a method that
    reports the nearest-mean classifier too needs both over the test images). With ``fold_bn`` the forwards run
    on a copy of the model with folded batch norms (:func:`cil_models.fold_batch_norms`: 15-25 ms for a
    ResNet-32 on a CPU), made per call, or once for every call inside :meth:`fixed`."""

    def __init__(self, device: torch.device, batch_size: int, to_input: Callable[[torch.Tensor], torch.Tensor],
                 autocast: Callable[[], contextlib.AbstractContextManager], *, fold_bn: bool = False) -> None:
        self.device, self.batch_size, self.to_input, self.autocast = device, batch_size, to_input, autocast
        self.fold_bn = fold_bn
        self._fixed: tuple[IncrementalNet, IncrementalNet | None] | None = None  # (model, its folded copy or None)

    @contextlib.contextmanager
    def fixed(self, model: IncrementalNet) -> Iterator[None]:
        """A block in which ``model``'s weights do not change (the caller's promise): with ``fold_bn``, every
        call on ``model`` inside it runs on one folded copy, made at the first call (the end of a phase folds
        once for the memory update's features and the evaluation's forwards, not once per call)."""
        if self._fixed is not None:
            raise RuntimeError("Extractor.fixed blocks do not nest")
        self._fixed = (model, None)
        try:
            yield
        finally:
            self._fixed = None

    def _forward_model(self, model: IncrementalNet) -> IncrementalNet:
        if not self.fold_bn:
            return model
        if self._fixed is None or self._fixed[0] is not model:
            return fold_batch_norms(model)
        if self._fixed[1] is None:
            self._fixed = (model, fold_batch_norms(model))
        return self._fixed[1]

    def _in_chunks(self, fn: Callable[[torch.Tensor], Any], tensor: torch.Tensor, *, images: bool = True) -> list:
        """``fn`` over ``tensor`` in chunks of ``batch_size`` under the autocast, one output per chunk; uint8
        ``images`` are moved to the device and normalised first."""
        outs = []
        for chunk in tensor.split(self.batch_size):
            if images:
                chunk = self.to_input(chunk.to(self.device, non_blocking=True))
            with self.autocast():
                outs.append(fn(chunk))
        return outs

    @torch.no_grad()
    def with_frozen_features(self, model: IncrementalNet, images: torch.Tensor, keys: torch.Tensor,
                             store: FrozenFeatures,
                             what: str = "logits") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """As ``self(model, images, what)`` (``what``: ``"logits"`` or ``"both"``), with each extractor's
        features taken from ``store`` for the images it has seen before unchanged (``keys``: one stable key per
        image, e.g. its index in the data set's test split), and stored for the next call. A network without
        frozen extractors runs the plain forward and stores nothing. The network's head runs on the
        concatenated features, as in its forward."""
        if what not in ("logits", "both"):
            raise ValueError(f'what must be "logits" or "both", got {what!r}')
        model.eval()
        if not model.frozen_extractors or not len(images):
            return self(model, images, what)
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        net = self._forward_model(model)
        # every extractor goes through the store: the trainable newest one too, which the next phase freezes
        # (DER); its rows stay valid only if nothing changes it in between (see FrozenFeatures)
        parts = [store.features(own, keys, lambda rows, run=run: torch.cat(self._in_chunks(run, images[rows])))
                 for own, run in zip(model.extractors, net.extractors)]
        feats = torch.cat(parts, dim=1)
        out = torch.cat(self._in_chunks(lambda f: net.logits(f).float(), feats, images=False))
        return (out, feats.float()) if what == "both" else out

    @torch.no_grad()
    def __call__(self, model: IncrementalNet, images: torch.Tensor,
                 what: str = "logits") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if what not in ("logits", "features", "both"):
            raise ValueError(f'what must be "logits", "features" or "both", got {what!r}')
        model.eval()
        if len(images):
            model = self._forward_model(model)
        if what == "features":
            outs = self._in_chunks(lambda x: model.features(x).float(), images)
        elif what == "logits":
            outs = self._in_chunks(lambda x: model(x).float(), images)
        else:
            outs = self._in_chunks(lambda x: tuple(t.float() for t in model(x, return_features=True)), images)
        empty = torch.zeros(0, device=self.device)
        cat = (lambda parts: torch.cat(parts) if parts else empty)
        if what == "both":
            return cat([z for z, _ in outs]), cat([f for _, f in outs])
        return cat(outs)


class FrozenFeatures:
    """Features of extractors on fixed images (the test split), kept from one phase to the next.

    A network that grows an extractor per phase and freezes the old ones (DER) forwards every extractor in
    each evaluation: phase ``t`` costs ``t`` forwards of its test images. A frozen extractor gives the same
    features on the same image in every later phase, so they are stored here by image key, and only the
    images an extractor has not seen (the new classes' test images) are forwarded through it again. The
    newest extractor's rows are stored too: the next phase freezes it unchanged, so it then forwards only the
    new images as well (10 phases of equal classes, in units of one phase's test images: 101 extractor passes
    instead of 385 without the store and 145 with the frozen extractors' rows alone). An entry is
    used only while its extractor is the same module with the same tensors: every parameter and buffer keeps
    its storage and its version counter (an optimiser step, ``copy_`` or ``load_state_dict`` changes the
    version); otherwise it is dropped and computed again. Memory: one row of features per stored image and
    extractor (21,300 test images × 64 features × 2 bytes in bf16: 2.7 MB per ResNet-8 extractor)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, tuple, torch.Tensor, torch.Tensor]] = {}  # id → (ref, sig, keys, rows)

    @staticmethod
    def _signature(module: torch.nn.Module) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))

    def __len__(self) -> int:
        """Rows stored, over every extractor."""
        return sum(len(entry[2]) for entry in self._entries.values())

    def features(self, extractor: torch.nn.Module, keys: torch.Tensor,
                 compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``extractor``'s features of the images ``keys`` (unique): stored rows where they exist, the others from
        ``compute(rows)`` (their positions in ``keys``), which are then stored."""
        for ident in [k for k, entry in self._entries.items() if entry[0]() is None]:
            del self._entries[ident]  # extractors that no longer exist
        keys = keys.to(torch.int64).cpu()
        sig = self._signature(extractor)
        entry = self._entries.get(id(extractor))
        if entry is not None and (entry[0]() is not extractor or entry[1] != sig):
            entry = None
        known, rows = (entry[2], entry[3]) if entry is not None else (keys[:0], None)
        if len(known):
            pos = torch.searchsorted(known, keys).clamp(max=len(known) - 1)
            hit = known[pos] == keys
        else:
            pos, hit = torch.zeros_like(keys), torch.zeros(len(keys), dtype=torch.bool)
        if rows is not None and bool(hit.all()):
            return rows[pos.to(rows.device)]
        miss = torch.nonzero(~hit).flatten()
        fresh = compute(miss)
        out = fresh.new_empty((len(keys),) + tuple(fresh.shape[1:]))
        out[miss.to(out.device)] = fresh
        if rows is not None and bool(hit.any()):
            out[hit.to(out.device)] = rows[pos[hit].to(rows.device)]
        all_keys = torch.cat([known, keys[miss]])
        all_rows = fresh if rows is None else torch.cat([rows, fresh])
        order = torch.argsort(all_keys)
        self._entries[id(extractor)] = (weakref.ref(extractor), sig, all_keys[order],
                                        all_rows[order.to(all_rows.device)])
        return out


def prediction_metrics(pred: torch.Tensor, y: torch.Tensor, boundaries: list[int], num_old: int,
                       train_counts: torch.Tensor) -> dict[str, Any]:
    """Accuracy, per-task accuracies, old/new accuracy, imbalance score and many/medium/few-shot accuracy."""
    old, new = M.old_new_accuracy(pred, y, num_old)
    return {
        "acc": M.accuracy(pred, y),
        "task_acc": M.task_accuracies(pred, y, boundaries),
        "old_acc": old,
        "new_acc": new,
        "imbalance_score": M.imbalance_score(pred, y, num_old),
        "many_medium_few": M.shot_accuracy(pred, y, train_counts),
    }


def evaluate_phase(model: IncrementalNet, scenario: IncrementalScenario, t: int, extract: Extractor,
                   kinds: tuple[str, ...], memory: ExemplarMemory | None, *,
                   added_features: torch.Tensor | None = None,
                   frozen_features: FrozenFeatures | None = None) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Phase ``t``'s record on the test images of every seen class, with the CNN's predictions and targets.

    ``kinds`` holds ``"nme"`` when the nearest-mean-of-exemplars classifier is reported too (``rec["nme"]``:
    None without exemplars). ``added_features``: features of the memory's last rows (the exemplars this phase
    added, ``memory.added``) from ``model`` as it is now, e.g. kept from the herding extraction: the class
    means then forward only the other exemplars. ``frozen_features``: the store of the extractors' test
    features of a network with frozen extractors (:class:`FrozenFeatures`, kept by the caller from phase to phase)."""
    phase = scenario.phase(t)
    x, y = scenario.test_data(phase)
    y = y.to(extract.device)
    bounds = list(scenario.boundaries[: t + 2])
    with_nme = "nme" in kinds and memory is not None and len(memory) > 0
    if frozen_features is not None:
        forward = lambda what: extract.with_frozen_features(model, x, phase.test_indices, frozen_features, what)
    else:
        forward = lambda what: extract(model, x, what)
    if with_nme:  # one forward over the test images gives the CNN's logits and the features NME needs
        logits, test_feats = forward("both")
    else:
        logits, test_feats = forward("logits"), None
    pred = logits.argmax(1)
    rec = prediction_metrics(pred, y, bounds, phase.num_old, scenario.train_counts)
    if "nme" in kinds:
        if not with_nme:
            rec["nme"] = None
        else:
            nme = NMEClassifier()
            nme.fit(_memory_features(model, memory, extract, added_features), memory.labels.to(extract.device),
                    phase.num_seen)
            nme_pred = nme.predict(test_feats)
            rec["nme"] = prediction_metrics(nme_pred, y, bounds, phase.num_old, scenario.train_counts)
    return rec, pred.cpu(), y.cpu()


def _memory_features(model: IncrementalNet, memory: ExemplarMemory, extract: Extractor,
                     added_features: torch.Tensor | None) -> torch.Tensor:
    if added_features is None or len(added_features) == 0:
        return extract(model, memory.images, "features")
    k = len(added_features)
    if k > len(memory):
        raise ValueError(f"added_features has {k} rows but the memory holds {len(memory)} exemplars")
    return torch.cat([extract(model, memory.images[: len(memory) - k], "features"), added_features.to(extract.device)])


def run_summary(records: list[dict[str, Any]], *, method: str, data_name: str, scenario: IncrementalScenario,
                class_names: list[str]) -> dict[str, Any]:
    """The summary of ``metrics.json`` (METHODS.md §6) from the per-phase records."""
    T = scenario.num_phases
    acc = [r["acc"] for r in records]
    matrix = [r["task_acc"] + [None] * (T - len(r["task_acc"])) for r in records]
    out: dict[str, Any] = {
        "complete": True,
        "method": method,
        "data": data_name,
        "num_phases": T,
        "increments": list(scenario.increments),
        "class_order": [int(c) for c in scenario.class_order],
        "class_names": [class_names[c] for c in scenario.class_order],
        "train_counts": [int(c) for c in scenario.train_counts],
        "acc_per_phase": acc,
        "avg_inc_acc": M.average_incremental_accuracy(acc),
        "last_acc": acc[-1],
        "acc_matrix": matrix,
        "forgetting": M.forgetting(matrix),
        "old_acc": [r["old_acc"] for r in records],
        "new_acc": [r["new_acc"] for r in records],
        "imbalance_score": [r["imbalance_score"] for r in records],
        "many_medium_few": [r["many_medium_few"] for r in records],
    }
    if any(r.get("nme") for r in records):
        out["nme"] = _nme_summary([r.get("nme") for r in records], T)
    return out


def _nme_summary(nme: list[dict[str, Any] | None], num_phases: int) -> dict[str, Any]:
    """The nearest-mean-of-exemplars classifier's figures, with the CNN summary's keys (None where a phase
    had no exemplars, e.g. phase 0 of a run whose memory is filled after evaluation)."""
    acc = [r["acc"] if r else None for r in nme]
    known = [a for a in acc if a is not None]
    out: dict[str, Any] = {"acc_per_phase": acc, "avg_inc_acc": sum(known) / len(known) if known else None,
                           "last_acc": acc[-1]}
    for key in ("old_acc", "new_acc", "imbalance_score"):
        out[key] = [r[key] if r else None for r in nme]
    if all(r is not None for r in nme):
        matrix = [r["task_acc"] + [None] * (num_phases - len(r["task_acc"])) for r in nme]
        out["acc_matrix"], out["forgetting"] = matrix, M.forgetting(matrix)
    return out
