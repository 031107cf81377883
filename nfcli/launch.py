"""The ``nfcli`` command's entry point (and ``python -m nfcli``): imports the command line with
Python's cyclic garbage collector paused, then leaves what the imports made (some 260,000
long-lived objects of torch, sympy, matplotlib, typer and rich) out of its later scans.

With the collector on, importing the command line ran full passes over all of them (1.55–1.6 s
to import ``nfcli.cli`` against 1.15–1.25 s with it paused, three fresh processes each), and a
further 0.14-s pass came while drawing density.png. Only the command's own process is frozen:
``import nfcli`` as a library pauses the collector for its imports and leaves it as it was.
"""

import gc


def main() -> None:
    collecting = gc.isenabled()
    gc.disable()
    try:
        from nfcli import cli
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    cli.main()
