"""PyTorch backends: torch-amp, torch-manual, their shared base, models and optimizers."""
