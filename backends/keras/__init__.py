"""Keras 3 backends: the models and torch-style optimizers shared by every Keras runtime, and tf-keras."""
