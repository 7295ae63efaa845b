"""``python -m segbook.train``: the command line of :mod:`segbook.train.cli`."""
from .cli import main

raise SystemExit(main())
