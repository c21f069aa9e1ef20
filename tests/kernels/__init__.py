"""Tests of src/kernels/."""
