"""``python -m miaws`` is the ``miaws`` command."""

from miaws.cli.main import main

raise SystemExit(main())
