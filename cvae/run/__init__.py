"""What the entry points do: train.py (train.py here), evaluate.py (evaluate.py here), and what they share:
checkpoints, config checks, one-line errors, hparams, loggers, local DDP ranks, sweep summaries. The top layer:
imports everything below it, and nothing imports it but the entry points and benchmarks/."""

import warnings

# Lightning warns at every Trainer that `srun` is on PATH but unused. Where SLURM is merely installed (a login
# node, CI), a run started without srun is meant that way: local DDP ranks are started by cvae/run/launch.py.
warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
