"""The training losses, one module each, their shared helpers, the stage registry by loss name, and create_loss."""
