"""Deployment: the exported feature network, the inference chain's files, the CPU stand-in for the 310 runner."""
