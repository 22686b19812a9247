"""The rack simulator (``bench/simulate.py`` is its entry point; bench/README.md its manual).

Modules, from the bottom up: :mod:`.options` (what a run depends on), :mod:`.profiles` (the
firmware), :mod:`.netns`, :mod:`.transport` (sockets), :mod:`.servers` (root, massboot,
upstream), :mod:`.client` (one machine), :mod:`.report` (figures), :mod:`.rack` (a run),
:mod:`.cli` (the command line). This package never patches: the entry point does, first.

Importable: :func:`run` takes :class:`Options` and returns a :class:`Summary`; :func:`main` is
the command line.
"""

from .cli import main
from .options import PHASES, Options, SetupError
from .profiles import PROFILES, Profile, Stage
from .rack import run
from .report import Summary

__all__ = ["PHASES", "PROFILES", "Options", "Profile", "SetupError", "Stage", "Summary", "main", "run"]
