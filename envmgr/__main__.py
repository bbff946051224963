"""``python -m envmgr``: the same front door as the ``envmgr`` script."""

from .entry import main

main()
