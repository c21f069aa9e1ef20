"""Tests of src/training/."""
