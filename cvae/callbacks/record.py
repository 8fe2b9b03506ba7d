"""The run's training settings in every checkpoint, so that a resume can be compared with the run it continues
(cvae/run/resume.py decides what may differ)."""

import pytorch_lightning as pl

LR = "model.optimizer.lr"


class RunRecord(pl.Callback):
    """Keeps `settings` (dotted key -> value) in every checkpoint. A resume that changed the lr (allowed with
    resume.allow_changes=true) continues with the lr asked for: every lr the restored optimizer and schedulers hold
    is scaled by new / old, so a schedule goes on from where it was, at the new scale."""

    def __init__(self, settings: dict):
        self.settings = settings
        self.restored: dict = {}

    def state_dict(self) -> dict:
        return {"settings": self.settings}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restored = state_dict.get("settings") or {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        old, new = self.restored.get(LR), self.settings.get(LR)
        if not old or not new or old == new:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= new / old
                if "initial_lr" in group:
                    group["initial_lr"] *= new / old
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "base_lrs"):  # ReduceLROnPlateau has none: it scales the current lr
                config.scheduler.base_lrs = [lr * new / old for lr in config.scheduler.base_lrs]
