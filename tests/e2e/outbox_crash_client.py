"""One client process of the outbox crash campaign (test_outbox_crash.py).

Submits ``--count`` rows, alternating the operations push_row (not safe to repeat) and
push_keyed (stamps its key), each under its own idempotency key, with the blocking client
(which waits for a restarting daemon and sends a keyed submit again after a lost connection).
Every acknowledged submit is appended to ``--out`` as one JSON line, flushed before the next
submit; a submit that failed is written with its error. Exit status 0.
"""

from __future__ import annotations

import argparse
import json
import sys

from claykiln.daemon import Client, KilnError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--client", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with (
        open(args.out, "a", encoding="utf-8") as out,
        Client(args.socket, timeout=60.0, connect_timeout=60.0) as kiln,
    ):
        for n in range(args.count):
            row_id = f"c{args.client}-{n}"
            operation = "push_row" if n % 2 == 0 else "push_keyed"
            webhook = "plain" if operation == "push_row" else "keyed"
            line: dict[str, object] = {"row": row_id, "operation": operation}
            try:
                answer = kiln.submit(
                    operation,
                    path_params={"webhook_id": webhook},
                    json={"id": row_id},
                    idempotency_key=row_id,
                )
            except KilnError as exc:
                line["error"] = f"{exc.code}: {exc.message}"
            else:
                line["job_id"] = answer["job_id"]
                line["existing"] = answer["existing"]
            out.write(json.dumps(line) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
