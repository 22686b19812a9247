"""``python -m massboot`` runs the command line."""

from massboot.cli import main

raise SystemExit(main())
