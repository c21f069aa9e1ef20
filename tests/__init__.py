"""The test suite: one folder per package of src/, the end-to-end runs of the entry points at the top."""
