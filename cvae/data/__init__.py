"""MNIST for training and evaluation: the datamodule (mnist.py) and the in-memory batches with their per-rank
sharding (batches.py). Imports cvae.model (pixel layout) and the foundation."""
