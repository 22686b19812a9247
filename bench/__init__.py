"""Load generators and benchmarks for massboot (bench/README.md).

A package so that its modules import each other by name (``bench.tftpcore``, ``bench.sim``),
whether a script is run as ``python -m bench.simulate`` or as a file (``python
bench/simulate.py``, see :mod:`bench._as_file`). Nothing here patches: the entry points do.
"""
