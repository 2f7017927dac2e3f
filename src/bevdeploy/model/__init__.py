"""Reference BEVFusion in plain PyTorch, with module names equal to the official checkpoint keys."""
