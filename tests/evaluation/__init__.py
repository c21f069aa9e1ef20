"""Tests of src/evaluation/."""
