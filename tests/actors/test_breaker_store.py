"""The breaker persisted through the real storage writer into LMDB (real clock: worker threads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from claykiln.actors.breaker import BreakerBoard, BreakerPolicy, BreakerState, Outcome
from claykiln.actors.writer import Writer
from claykiln.storage import Put, Store, text_key

POLICY = BreakerPolicy(volume_threshold=2, reset_timeout=300.0, reset_backoff=1, reset_jitter=0)


async def test_open_breaker_survives_a_restart_through_lmdb(tmp_path: Path) -> None:
    """A breaker opened before a restart comes back open from the real store, same deadline."""
    path = tmp_path / "state"
    store = Store.open(path)
    writer = Writer(store)

    def persist(key: str, record: dict[str, Any]) -> None:
        if not writer.write_nowait([Put("breakers", text_key(key), record)]):
            msg = "storage writer inbox full"
            raise RuntimeError(msg)

    def load(key: str) -> Any:
        return store.get("breakers", text_key(key))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            board = BreakerBoard({"clay": POLICY}, BreakerPolicy(), persist=persist, load=load)
            await nursery.start(board.run)
            for _ in range(2):
                board.record(await board.acquire("clay"), Outcome.FAILURE, 0.01)
            await trio.testing.wait_all_tasks_blocked()
            assert board.snapshot["clay"].state is BreakerState.OPEN
            [before] = board.views()
            await writer.write([])  # barrier: the transition is durable
            await writer.aclose()
            nursery.cancel_scope.cancel()
    store.close()

    reopened = Store.open(path)
    try:
        board = BreakerBoard(
            {"clay": POLICY},
            BreakerPolicy(),
            persist=lambda key, record: None,
            load=lambda key: reopened.get("breakers", text_key(key)),
        )
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(board.run)
                assert board.snapshot["clay"].state is BreakerState.OPEN
                [after] = board.views()
                assert abs(after["open_until"] - before["open_until"]) < 1.0
                nursery.cancel_scope.cancel()
    finally:
        reopened.close()
