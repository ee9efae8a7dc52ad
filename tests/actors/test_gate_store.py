"""The gate's closure survives a restart through a real LMDB store (real clock: worker threads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from claykiln.actors.errors import RateLimitedRefusal
from claykiln.actors.gate import GateBoard, RatePolicy
from claykiln.actors.writer import Writer
from claykiln.storage import Put, Store, text_key


def gate_on(store: Store, writer: Writer) -> GateBoard:
    """A gate wired to the store the way the daemon wires it."""

    def persist(key: str, record: dict[str, Any]) -> None:
        writer.write_nowait([Put("gate", text_key(key), record)])

    def load(key: str) -> dict[str, Any] | None:
        value = store.get("gate", text_key(key))
        return value if isinstance(value, dict) else None

    return GateBoard({"clay": RatePolicy()}, persist=persist, load=load)


async def test_closure_survives_restart_with_real_store(tmp_path: Path) -> None:
    """A closure written through the writer is honoured by a gate on the reopened store."""
    path = tmp_path / "state"
    with trio.fail_after(20):
        store = await trio.to_thread.run_sync(Store.open, path)
        writer = Writer(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            gate = gate_on(store, writer)
            await nursery.start(gate.run)
            gate.close_until("clay", 300.0, "429")
            await trio.testing.wait_all_tasks_blocked()  # the gate queued its write
            await writer.write([])  # barrier: everything queued before it is durable
            assert store.get("gate", b"clay")["reason"] == "429"
            await writer.aclose()
            nursery.cancel_scope.cancel()
        store.close()

        store = await trio.to_thread.run_sync(Store.open, path)
        try:
            writer = Writer(store)
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                gate = gate_on(store, writer)
                await nursery.start(gate.run)
                assert gate.stats()["upstreams"]["clay"]["closed"] is True
                with pytest.raises(RateLimitedRefusal) as info:
                    await gate.acquire("clay", trio.current_time() + 1.0)
                assert info.value.details == {
                    "gate": "clay",
                    "upstream": "clay",
                    "reason": "closed",
                }
                assert info.value.retry_after is not None and info.value.retry_after > 200.0
                await writer.aclose()
                nursery.cancel_scope.cancel()
        finally:
            store.close()
