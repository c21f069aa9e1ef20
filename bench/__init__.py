"""Benchmarks and the reference tooling they share (bench/common.py); their measured results are in bench/results/."""
import sys

from bench import _bootstrap

# Each script's first line is `import _bootstrap` (found beside it when run as a file): the same module here.
sys.modules.setdefault("_bootstrap", _bootstrap)
