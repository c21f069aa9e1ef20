"""Tests of src/runtime/."""
