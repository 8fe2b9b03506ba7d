"""The experiment trackers as this project builds them (conf/logger/): TensorBoard opening on the curves
(tensorboard.py), CSV, MLflow and W&B continuing a resumed run (trackers.py), and the run's knobs and final figures
as every tracker gets them (hparams.py).

Only this file is torch-free: the sweep summary, which Hydra builds at start-up, reads FINAL_METRICS from it."""

# the headline metrics of a run, in this order: the loggers' final metrics, the sweep summary's columns and plots
FINAL_METRICS = ("val/nelbo", "test/nelbo", "val/fid", "test/fid", "val/label_acc", "test/label_acc")
