"""Kept for test modules that import the generator by its old name."""
from src.demo_data import make_retrieval_dataset  # noqa: F401
