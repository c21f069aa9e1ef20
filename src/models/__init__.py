"""The network: ResNet-50 backbone and embedding head, checkpoints, weights converted from PyTorch files."""
