"""``python -m bestofk.service.cli``: the same as the ``bestofk`` console script."""

from bestofk.service.cli.main import main

main()
