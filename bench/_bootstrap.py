"""A bench script's first import: the repository on sys.path, then src.runtime.env (before numpy loads).

`python bench/<script>.py` puts bench/ first on sys.path, where neither `bench` nor `src` can be imported: here
the repository takes bench/'s place (so the scripts' own modules are imported once, as `bench.<name>`). Imported
as `bench.<script>` (`python -m bench.<script>`, the tests), the package has already done this and registered this
module under its plain name (bench/__init__.py), so the scripts' `import _bootstrap` finds it either way.
"""
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.realpath(BENCH):
    sys.path[0] = ROOT
elif ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import src.runtime.env  # noqa: E402,F401  (CPU dispatch, BLAS kernel, glog: before numpy and mindspore load)
