"""The training losses, one module per loss, the helpers they share (common.py), and create_loss (factory.py)."""
