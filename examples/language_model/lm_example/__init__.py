"""A small decoder-only language model in PyTorch and its Keras twin, for precision-suite's
``kind: custom`` with per-token labels and ``parity.metric: loss``."""
