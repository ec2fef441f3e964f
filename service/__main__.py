"""``python -m service`` runs the same CLI as ``points-adjuster``."""

from service.cli import main

raise SystemExit(main())
