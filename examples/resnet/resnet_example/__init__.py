"""A ResNet-style model in PyTorch and its Keras twin, for precision-suite's ``kind: custom``."""
