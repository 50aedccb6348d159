"""Layer 6, the runtime: data loading, the training loop, evaluation, checkpoints."""
