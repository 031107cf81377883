"""Importing nfcli: the garbage collector is paused for its imports and left as it was."""

import subprocess
import sys

PROBE = "import gc; {before}import nfcli; print(gc.isenabled(), gc.get_freeze_count())"


def imported(before: str = "") -> tuple[bool, int]:
    """In a fresh interpreter, after ``before``: is gc on after importing nfcli, and how many
    objects are frozen."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_import_leaves_the_collector_on_and_what_it_made_frozen():
    """torch, sympy and matplotlib's long-lived objects (some 260,000) are out of the collector's
    scans, and the collector is still on."""
    on, frozen = imported()
    assert on and frozen > 100_000


def test_import_does_not_turn_on_a_collector_that_was_off():
    on, _ = imported("gc.disable(); ")
    assert not on
