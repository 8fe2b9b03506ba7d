"""Ctrl-C and SIGTERM stop a run at the end of an optimizer step, on every rank the same one, so that the checkpoint
written on the way out (CheckpointOnInterrupt) resumes exactly (docs/ddp-and-clusters.md)."""

import signal
import threading

import pytorch_lightning as pl
import torch


class StopTogether(pl.Callback):
    """Notes the signal this rank got and, at the end of the step once one was noted (under DDP on any rank, agreed
    by a MAX over one integer per step), delivers SIGTERM to Lightning's own handler on every rank, which stops the
    run there; `stopped_by` keeps which signal it was (for cvae.run.launch.exit_as_signalled).

    One process: SIGTERM is Lightning's alone; a Ctrl-C is held to the step's end (its KeyboardInterrupt would stop
    the run halfway through a step, which no checkpoint resumes exactly). Under DDP both are noted from the start:
    Lightning's SIGTERM handler runs a collective on the signalled rank alone (a deadlock mid-step), forwards the
    signal only to ranks its own launcher started, and Lightning has no SIGINT handling under DDP."""

    def __init__(self):
        self.received = 0  # the signal this rank got (SIGTERM outranks SIGINT)
        self.stopped_by = 0  # the signal every rank stopped for
        self.lightning_sigterm = None
        self.holding_interrupts = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning registered its handlers; it puts back those of before fit at its teardown
        self.lightning_sigterm = signal.getsignal(signal.SIGTERM)
        if trainer.world_size > 1:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self.receive)

    def receive(self, signum: int, frame) -> None:
        self.received = max(self.received, signum)

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        interruptible = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not ignored (a background job)
        if trainer.world_size == 1 and interruptible and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.receive)
            self.holding_interrupts = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if self.holding_interrupts:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.holding_interrupts = False
        agreed = self.agree(trainer)
        if agreed and not self.stopped_by:
            self.stopped_by = agreed
            signal.signal(signal.SIGTERM, self.lightning_sigterm)
            signal.raise_signal(signal.SIGTERM)  # Lightning stops at the end of this step

    def agree(self, trainer: pl.Trainer) -> int:
        """The highest signal any rank received."""
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return self.received
        agreed = torch.tensor(self.received, device=trainer.strategy.root_device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        return int(agreed.item())
