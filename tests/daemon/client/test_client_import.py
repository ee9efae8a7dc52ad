"""Importing the client library stays cheap: no trio, asyncio or server-side modules."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["trio", "asyncio", "lmdb", "httpx", "httpcore", "h11", "structlog", "claykiln.actors",
         "claykiln.storage"]  # fmt: skip

PROBE = """
import json, sys
heavy = tuple(json.loads(sys.argv[1]))
import claykiln.daemon as kiln
loaded = sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + "." for h in heavy)))
missing = [name for name in kiln.__all__ if name not in ("TrioClient", "AsyncioClient")
           and not hasattr(kiln, name)]
eager_loaded = sorted(m for m in sys.modules if m in heavy)
trio_before = "trio" in sys.modules
kiln.TrioClient
trio_after = "trio" in sys.modules
kiln.AsyncioClient
asyncio_after = "asyncio" in sys.modules
print(json.dumps([loaded + eager_loaded, missing, trio_before, trio_after, asyncio_after]))
"""


def test_import_is_cheap_and_async_flavors_are_lazy() -> None:
    """`import claykiln.daemon` and its sync names load no heavy module; TrioClient/AsyncioClient
    load on access."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded, missing, trio_before, trio_after, asyncio_after = json.loads(out.stdout)
    assert loaded == [], f"imported by `import claykiln.daemon`: {loaded}"
    assert missing == [], f"in __all__ but not available: {missing}"
    assert (trio_before, trio_after, asyncio_after) == (False, True, True)
