"""massboot.cli.tune_gc: the collector's settings while serving."""

from __future__ import annotations


def test_tune_gc_freezes_startup_and_raises_the_young_threshold() -> None:
    """massboot.cli.tune_gc (issue #14: collections of the default thresholds paused a busy
    DHCP hub up to 150 ms)."""
    import gc

    from massboot.cli import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
