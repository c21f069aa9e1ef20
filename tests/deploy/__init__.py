"""Tests of src/deploy/."""
