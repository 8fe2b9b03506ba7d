"""The entry points' work (train.py, evaluate.py) and what they share. The top layer: nothing imports it but the
entry points and benchmarks/."""

import warnings

# Lightning warns at every Trainer that `srun` is on PATH but unused. Where SLURM is merely installed (a login
# node, CI), a run started without srun is meant that way: local DDP ranks are started by cvae/run/launch.py.
warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
