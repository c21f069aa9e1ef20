"""Tests of src/losses/."""
