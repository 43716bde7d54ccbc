"""``python -m harness``: the command line (harness.cli)."""

from harness.cli import main

raise SystemExit(main())
