import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# CPU dispatch, BLAS kernel and glog level for the test process and every subprocess it starts.
import src.runtime_env  # noqa: E402,F401
