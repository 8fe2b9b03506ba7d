"""The experiment trackers as this project builds them (conf/logger/). Only this file is torch-free: the sweep
summary, which Hydra builds at start-up, reads FINAL_METRICS from it."""

# the headline metrics of a run, in this order: the loggers' final metrics, the sweep summary's columns and plots
FINAL_METRICS = ("val/nelbo", "test/nelbo", "val/fid", "test/fid", "val/label_acc", "test/label_acc")
