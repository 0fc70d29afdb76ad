"""cil-train: the class-incremental phase loop, every method as a recipe, metrics, reports, resume, DDP.

Command line: ``cil-train --help`` (or ``python -m cil_train``). From Python::

    from cil_train import RunConfig, run
    metrics = run(RunConfig(method="ssil", epochs=5, out="runs/try"))
    metrics = run(RunConfig(method="ssil", method_options={"ssil_batch_new": 64}, out="runs/try2"))
"""

__version__ = "0.2.0"

from .config import RunConfig
from .errors import ConfigError, TrainingDiverged

__all__ = ["ConfigError", "RunConfig", "TrainingDiverged", "__version__", "run"]


def run(cfg: RunConfig) -> dict:
    """Train ``cfg`` in one process and return the final metrics (also written to ``cfg.out``)."""
    from pathlib import Path

    from .checkpoint import atomic_write_json
    from .cli import default_out_dir
    from .config import check_config
    from .loop import Trainer
    from .runlock import RunLock

    check_config(cfg)
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg)
    cfg = cfg.replace(out=str(out))
    with RunLock(out):  # one writer per run folder
        if not cfg.resume:
            atomic_write_json(out / "config.json", {k: v for k, v in cfg.to_dict().items() if k != "resume"})
        return Trainer(cfg, out).run()
