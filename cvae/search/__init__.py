"""The project's Optuna search: a Hydra sweeper (registered by entry point, conf/hydra/sweeper/optuna_study.yaml) that
drives one Optuna study shared by any number of search processes, through its storage."""
