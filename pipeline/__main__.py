"""``python -m pipeline`` is the ``immunoprofile`` command."""

from .cli import main

raise SystemExit(main())
