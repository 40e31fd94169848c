"""Training: the loop, losses, DiffAugment, EMA and resumable safetensors checkpoints."""
