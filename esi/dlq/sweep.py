"""The index's sweep: dead letters that reached a DLQ without a row in the index (a raw poison publish, a message
dead-lettered by an esi before the index, a process killed between its dead-letter publish and its index write)
are indexed here, by the API service, every `ESI_DLQ_SWEEP_INTERVAL`.

A sweep looks at a queue only when it holds more messages than the index has parked rows for it (a passive declare
and a count: nothing is read otherwise), and skips a queue a replay or purge job is working on (the sweep holds the
messages it looks at, unacked, for a moment: the job would find the queue empty). It looks at `ESI_DLQ_SWEEP_MAX`
messages from the head at most.
"""

from __future__ import annotations

import asyncio
import logging

from esi.bus.dead_letters import DeadLetters
from esi.bus.topology import Topology
from esi.dlq.entries import KeysOf, entry_of
from esi.store import Store
from esi.store.dead_letters import PARKED

log = logging.getLogger(__name__)


class Sweep:
    def __init__(
        self,
        *,
        dead_letters: DeadLetters,
        store: Store,
        topology: Topology,
        keys: KeysOf | None = None,
        max_messages: int = 20_000,
    ) -> None:
        self._dead_letters = dead_letters
        self._store = store
        self._topology = topology
        self._keys = keys
        self._max = max_messages

    async def once(self) -> int:
        """Index what the DLQs hold and the index does not; how many rows were written."""
        counts = await self._store.dead_letters.counts_by_queue()
        busy = await self._store.dlq_jobs.busy_queues()
        written = 0
        for work in self._topology.work_queues:
            queue = work.dead_letter_queue
            if queue in busy or await self._dead_letters.depth(queue) <= counts.get(queue, 0):
                continue
            letters = await self._dead_letters.scan(queue, limit=self._max)
            known = await self._store.dead_letters.states(queue, [d.id for d in letters])
            missing = [d for d in letters if d.id not in known or known[d.id].state != PARKED]
            rows = list({d.id: entry_of(d, system=work.system, keys=self._keys) for d in missing}.values())
            await self._store.dead_letters.add(rows, indexed_by="sweep")
            if rows:
                log.info("indexed %d dead letter(s) of %s that had no row in the index", len(rows), queue)
            written += len(rows)
        return written

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                await self.once()
            except Exception as exc:  # noqa: BLE001 - the next interval tries again
                log.warning("the dead-letter sweep failed: %s", exc)
            await asyncio.sleep(interval_s)
