"""python -m nfcli"""

from nfcli.cli import main

main()
