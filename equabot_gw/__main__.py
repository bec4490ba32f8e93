"""``python -m equabot_gw``: the command line (see ``cli.py``)."""

from .cli import main

main()
