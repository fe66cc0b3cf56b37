"""redisca's benchmark: the ORM against hand-written redis-py code, phase by phase.

Run it with ``python -m bench`` (see ``docs/performance.rst``). It is not part
of the test suite: nothing in ``tests/`` times anything.
"""

import os
import sys

#: Set by the bench itself for its child run without hiredis. redis-py decides
#: whether to use hiredis once, at import, so the block must come first.
NO_HIREDIS_ENV = "REDISCA_BENCH_NO_HIREDIS"

if os.environ.get(NO_HIREDIS_ENV) == "1":
    sys.modules["hiredis"] = None  # type: ignore[assignment]
