"""Importing nfcli: the garbage collector is paused for its imports and left as it was, and
nothing of the importing process is frozen (only the command line freezes, in ``cli.main``)."""

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


def test_import_leaves_the_collector_on_and_a_library_users_objects_unfrozen():
    on, frozen = imported()
    assert on and frozen == 0


def test_import_does_not_turn_on_a_collector_that_was_off():
    on, _ = imported("gc.disable(); ")
    assert not on


def test_the_command_imports_with_the_collector_paused_and_freezes_what_they_made():
    """nfcli's command (nfcli.launch) leaves torch, sympy and matplotlib's long-lived objects
    (some 260,000) out of the collector's scans, and the collector on."""
    code = (
        "import gc, sys, nfcli.launch as launch, nfcli.cli as cli; "
        "cli.main = lambda: print(gc.get_freeze_count(), gc.isenabled()); launch.main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    frozen, on = out.stdout.split()[-2:]
    assert int(frozen) > 100_000 and on == "True"
