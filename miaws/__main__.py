"""``python -m miaws`` is the ``miaws`` command."""

from miaws.cli import main

raise SystemExit(main())
