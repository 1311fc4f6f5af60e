"""``python -m argmaxcheck``."""

from .cli import main

raise SystemExit(main())
