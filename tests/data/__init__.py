"""Tests of src/data/."""
