"""What the entry points do: train.py (train.py here), evaluate.py (evaluate.py here), and what they share:
checkpoints, config checks, one-line errors, hparams, loggers, local DDP ranks, sweep summaries. The top layer:
imports everything below it, and nothing imports it but the entry points and benchmarks/."""
