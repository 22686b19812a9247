"""Lets a bench script run as a file (``python bench/simulate.py``) import the package ``bench``.

Run as a file, a script gets its own directory (bench/) on ``sys.path``, not the directory above
it, so ``import bench`` finds nothing, and this module is found as a top-level ``_as_file``
for that same reason. Importing it registers bench/ as the package ``bench`` from its location
(the importlib recipe "Importing a source file directly", with the package's directory as its
search path); ``sys.path`` is left as it is, so the checkout cannot shadow anything else, an
installed massboot above all. Every entry point does, right after its gevent patching::

    if not __package__:  # run as a file
        import _as_file  # noqa: F401

``python -m bench.simulate`` and the tests import ``bench`` the ordinary way and never load this.
"""

import importlib.util
import os
import sys

if "bench" not in sys.modules:
    _here = os.path.dirname(os.path.abspath(__file__))
    _spec = importlib.util.spec_from_file_location("bench", os.path.join(_here, "__init__.py"),
                                                   submodule_search_locations=[_here])
    assert _spec is not None and _spec.loader is not None
    _bench = importlib.util.module_from_spec(_spec)
    sys.modules["bench"] = _bench
    _spec.loader.exec_module(_bench)
