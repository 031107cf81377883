"""python -m nfcli"""

from nfcli.launch import main

main()
