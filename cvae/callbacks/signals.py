"""Under DDP, SIGTERM or SIGINT to any rank, or to all, stops every rank after the same step, so that the
checkpoint written on the way out (CheckpointOnInterrupt) holds every rank at one step."""

import signal

import pytorch_lightning as pl
import torch


class StopTogether(pl.Callback):
    """Each rank notes the signal it got; after every step the ranks agree (a MAX over one integer, as Lightning
    itself broadcasts one per step), and once one was signalled every rank delivers SIGTERM to itself there, to
    Lightning's own handler, which stops the run at the end of that step with its SIGTERMException.

    Written here because Lightning's SIGTERM handler runs a collective inside the handler, on the signalled rank
    alone (a deadlock when one rank is signalled mid-step), and forwards the signal only to ranks its own
    launcher started; Lightning has no SIGINT handling under DDP. Delivered after the agreement, on every rank at
    the same point, that collective is joined by all."""

    def __init__(self):
        self.received = 0  # the signal this rank got (SIGTERM outranks SIGINT)
        self.stopped_by = 0  # the signal every rank stopped for
        self.lightning_handler = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning registered its handlers; it puts back those of before fit at its teardown
        if trainer.world_size > 1:
            self.lightning_handler = signal.signal(signal.SIGTERM, self.receive)
            signal.signal(signal.SIGINT, self.receive)

    def receive(self, signum: int, frame) -> None:
        self.received = max(self.received, signum)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if trainer.world_size == 1 or not torch.distributed.is_initialized() or self.stopped_by:
            return
        agreed = torch.tensor(self.received, device=trainer.strategy.root_device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        if agreed.item():
            self.stopped_by = int(agreed.item())
            signal.signal(signal.SIGTERM, self.lightning_handler)
            signal.raise_signal(signal.SIGTERM)  # Lightning stops at the end of this step, on every rank
