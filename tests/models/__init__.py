"""Tests of src/models/."""
