"""GRPO's seeded prompt sampler (its state is saved with every checkpoint). The records it draws
from are loaded by `training.records.load_records`, shared with SFT."""

from __future__ import annotations

import random
from typing import Any

from data_gen.schema import QARecord
from training.records import DataError


class PromptSampler:
    """Epochs over the records in a seeded order; skips records marked bad (unreadable video).

    The state (epoch, position, bad ids) is plain data saved in checkpoints, so a resumed run
    draws exactly the prompts the uninterrupted run would have drawn.
    """

    def __init__(self, records: list[QARecord], seed: int, shuffle: bool = True) -> None:
        self.records = records
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.pos = 0, 0
        self.bad: dict[str, str] = {}
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.records)))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def next(self, n: int) -> list[QARecord]:
        out: list[QARecord] = []
        usable = len(self.records) - len(self.bad)
        if usable <= 0:
            raise DataError(f"every record was rejected; last reasons: {list(self.bad.values())[-3:]}")
        while len(out) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            rec = self.records[self._order[self.pos]]
            self.pos += 1
            if rec.id not in self.bad:
                out.append(rec)
        return out

    def peek(self, n: int) -> list[QARecord]:
        """The records the next `next(n)` will return (bad ones skipped), without drawing them:
        what the video prefetch decodes ahead. The sampler's state is unchanged."""
        saved = (self.epoch, self.pos, self._order)
        try:
            return self.next(n)
        except DataError:
            return []
        finally:
            self.epoch, self.pos, self._order = saved

    def mark_bad(self, record: QARecord, reason: str) -> None:
        self.bad[record.id] = reason

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "bad": dict(self.bad)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos, self.bad = state["epoch"], state["pos"], dict(state["bad"])
        self._order = self._make_order()
