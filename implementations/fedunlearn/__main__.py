"""``python -m fedunlearn`` runs the command-line interface."""

from fedunlearn.cli import main

raise SystemExit(main())
