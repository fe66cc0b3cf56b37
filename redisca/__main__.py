"""``python -m redisca``: see :mod:`redisca.cli`."""

from .cli import main

raise SystemExit(main())
