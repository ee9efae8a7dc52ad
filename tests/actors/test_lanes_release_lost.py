"""A lane whose actor stopped draining its inbox: a release that finds no room within
LEAVE_GRACE is counted lost and raises the critical ``lane.release_lost`` alert."""

from __future__ import annotations

from typing import Any

import structlog
import trio

from claykiln.actors.lanes import LANES_INBOX_SIZE, LanePolicy, Lanes
from claykiln.actors.mailbox import mailbox_of


async def test_a_release_lost_to_a_full_inbox_is_a_critical_alert(autojump_clock: Any) -> None:
    """With the lanes actor hung (``Mailbox.wedge``) and its inbox full, leaving a slot waits
    LEAVE_GRACE, counts the release lost and logs lane.release_lost (critical, level error)."""
    policies = {"bulk": LanePolicy(concurrency=1, queue=1, max_wait=5.0)}
    lanes = Lanes(policies)
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        mailbox = mailbox_of(lanes)
        assert mailbox is not None
        with structlog.testing.capture_logs() as logs:
            async with lanes.slot("bulk", None):
                mailbox.wedge()
                await lanes.reconfigure(policies)  # answered; the next drain hangs
                while mailbox.tell(object()):  # fill the inbox: nothing drains it now
                    pass
                assert mailbox.queued == LANES_INBOX_SIZE
        assert lanes.lost_releases == 1
        assert lanes.stats()["lost_releases"] == 1
        nursery.cancel_scope.cancel()
    lost = [line for line in logs if line["event"] == "lane.release_lost"]
    assert len(lost) == 1
    assert lost[0]["lane"] == "bulk" and lost[0]["alert"] is True
    assert (lost[0]["severity"], lost[0]["log_level"]) == ("critical", "error")
