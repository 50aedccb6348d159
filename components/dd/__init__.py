"""Dataset distillation: components that learn, select or evaluate a small training set."""
