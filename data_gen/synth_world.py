"""The procedural world behind `longrl synth`: a seeded script of events on a grid of regions.

Time is cut into equal slots. Each slot opens with a short transition (objects that change
region glide there) and then holds a still state: which objects are visible, where, in what
colour, and whether they are enlarged (a "pulse", the repeated action). Exactly one scripted
event happens per slot, so "what happened first" always has one answer, and every state is held
long enough that uniformly sampled frames see it (`min_frames_to_see_all`).

Events: appear, leave, move (to a neighbouring region), recolour (spontaneous), pulse, and a
journey: an object travels region by region until it reaches another object, stops there, and
the object it touched takes its colour. The journey gives the causal questions ("why did X
stop", "why did Y turn red") a cause that is visible in the frames.

The output is a plain JSON-able log (`build_world(...)`); questions and captions are derived
from that log only, so they can be regenerated from `<video>.events.json`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

LOG_VERSION = 1
GRID_ROWS, GRID_COLS = 2, 3
REGIONS = ("top-left", "top-middle", "top-right", "bottom-left", "bottom-middle", "bottom-right")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
# RGB; far apart from each other and from the background so a few decoded pixels tell them apart.
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 220, 230),
    "white": (240, 240, 240),
}
BACKGROUND = (28, 28, 28)
MAX_OBJECTS = 4  # objects share a region on a 2x2 sub-grid of cells


def region_cell(region: str) -> tuple[int, int]:
    i = REGIONS.index(region)
    return divmod(i, GRID_COLS)


def neighbours(region: str) -> list[str]:
    r, c = region_cell(region)
    out = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        rr, cc = r + dr, c + dc
        if 0 <= rr < GRID_ROWS and 0 <= cc < GRID_COLS:
            out.append(REGIONS[rr * GRID_COLS + cc])
    return out


def shortest_path(src: str, dst: str) -> list[str]:
    """Regions visited after `src` up to and including `dst` (breadth first, fixed order)."""
    prev: dict[str, str | None] = {src: None}
    queue = deque([src])
    while queue:
        cur = queue.popleft()
        if cur == dst:
            break
        for nxt in neighbours(cur):
            if nxt not in prev:
                prev[nxt] = cur
                queue.append(nxt)
    path = [dst]
    while prev[path[-1]] != src:
        path.append(prev[path[-1]])  # type: ignore[arg-type]
    return path[::-1]


@dataclass
class ObjState:
    visible: bool = False
    region: str = ""
    colour: str = ""
    big: bool = False
    appeared: bool = False  # has been on screen (objects never come back after leaving)

    def copy(self) -> ObjState:
        return ObjState(self.visible, self.region, self.colour, self.big, self.appeared)


def _describe(ev: dict) -> str:
    o = f"the {ev['object']}"
    kind = ev["type"]
    if kind == "appear":
        return f"{o} appears in the {ev['region']} region, coloured {ev['colour']}"
    if kind == "leave":
        return f"{o} leaves the scene from the {ev['region']} region"
    if kind == "move":
        return f"{o} moves from the {ev['from_region']} to the {ev['to_region']} region"
    if kind == "recolour":
        cause = f" because the {ev['cause_object']} touched it" if ev.get("cause_object") else ""
        return f"{o} changes colour from {ev['from_colour']} to {ev['to_colour']}{cause}"
    if kind == "pulse":
        return f"{o} grows large for a moment in the {ev['region']} region"
    if kind == "journey_step":
        return f"{o} travels from the {ev['from_region']} to the {ev['to_region']} region"
    if kind == "stop":
        return f"{o} stops in the {ev['region']} region because it reached the {ev['cause_object']}"
    raise ValueError(f"unknown event type {kind!r}")


class _Script:
    """Builds the slot-by-slot script; one instance per video."""

    def __init__(self, rng: np.random.Generator, num_slots: int, num_objects: int, max_recolours: int = -1):
        self.rng = rng
        self.num_slots = num_slots
        self.objects = [str(s) for s in rng.choice(SHAPES, size=num_objects, replace=False)]
        self.pulser = self.objects[int(rng.integers(num_objects))]  # repeats its action most
        self.state = {o: ObjState() for o in self.objects}
        self.states: list[dict[str, ObjState]] = []
        self.events: list[dict] = []
        self.resting: set[str] = set()  # journey movers that must stay put for a slot
        self.journeys = 0
        self.max_recolours = max_recolours  # -1: no cap (a ladder rung caps colour changes)

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def visible(self) -> list[str]:
        return [o for o in self.objects if self.state[o].visible]

    def emit(self, slot: int, ev: dict) -> None:
        ev = {"slot": slot, **ev}
        ev["description"] = _describe(ev)
        self.events.append(ev)

    def appear(self, slot: int) -> None:
        o = self.pick([x for x in self.objects if not self.state[x].appeared])
        region, colour = self.pick(REGIONS), self.pick(list(COLOURS))
        self.state[o] = ObjState(True, region, colour, False, True)
        self.emit(slot, {"type": "appear", "object": o, "region": region, "colour": colour})

    def candidates(self, slot: int, remaining: int) -> dict[str, float]:
        vis = self.visible()
        free = [o for o in vis if o not in self.resting]
        unseen = [o for o in self.objects if not self.state[o].appeared]
        weights: dict[str, float] = {}
        if unseen:
            weights["appear"] = 2.5 if len(vis) < 2 else 1.0
        if len(free) >= 1 and len(vis) >= 3 and remaining > 2:
            weights["leave"] = 0.3
        recolour_ok = self.max_recolours < 0 or self._recolours() < self.max_recolours
        if free:
            weights["move"] = 1.0
            if recolour_ok:
                weights["recolour"] = 1.0
        if [o for o in vis if not self._was_big(o)]:
            weights["pulse"] = 1.3
        if recolour_ok and self._journey_options(remaining):  # a journey ends in a recolour
            # Every video should hold at least one cause to ask about.
            weights["journey"] = 4.0 if self.journeys == 0 and slot > self.num_slots // 3 else 1.2
        return weights

    def _recolours(self) -> int:
        return sum(e["type"] == "recolour" for e in self.events)

    def _was_big(self, o: str) -> bool:
        return bool(self.states) and self.states[-1][o].big

    def _journey_options(self, remaining: int) -> list[tuple[str, str, list[str]]]:
        out = []
        vis = self.visible()
        for mover in vis:
            if mover in self.resting:
                continue
            for target in vis:
                a, b = self.state[mover], self.state[target]
                if target == mover or a.colour == b.colour or a.region == b.region:
                    continue
                path = shortest_path(a.region, b.region)
                # The mover must meet nobody on the way: the one it stops at is the only cause.
                crowded = {self.state[o].region for o in vis if o != mover}
                if 2 <= len(path) <= remaining and not crowded & set(path[:-1]):
                    out.append((mover, target, path))
        return out

    def step(self, slot: int, kind: str) -> int:
        """Apply one event starting at `slot`; returns the number of slots it used."""
        if kind == "appear":
            self.appear(slot)
            return 1
        vis = [o for o in self.visible() if o not in self.resting]
        if kind == "leave":
            o = self.pick(vis)
            self.emit(slot, {"type": "leave", "object": o, "region": self.state[o].region})
            self.state[o].visible = False
            return 1
        if kind == "move":
            o = self.pick(vis)
            src = self.state[o].region
            dst = self.pick(neighbours(src))
            self.state[o].region = dst
            self.emit(slot, {"type": "move", "object": o, "from_region": src, "to_region": dst})
            return 1
        if kind == "recolour":
            o = self.pick(vis)
            old = self.state[o].colour
            new = self.pick([c for c in COLOURS if c != old])
            self.state[o].colour = new
            self.emit(slot, {"type": "recolour", "object": o, "from_colour": old, "to_colour": new})
            return 1
        if kind == "pulse":
            ok = [o for o in self.visible() if not self._was_big(o)]
            o = self.pulser if self.pulser in ok and self.rng.random() < 0.6 else self.pick(ok)
            self.state[o].big = True
            self.emit(slot, {"type": "pulse", "object": o, "region": self.state[o].region})
            return 1
        if kind == "journey":
            return self.journey(slot)
        raise ValueError(kind)

    def journey(self, slot: int) -> int:
        mover, target, path = self.pick(self._journey_options(self.num_slots - slot))
        self.journeys += 1
        for k, region in enumerate(path):
            src = self.state[mover].region
            self.state[mover].region = region
            self.emit(slot + k, {"type": "journey_step", "object": mover, "from_region": src,
                                 "to_region": region, "journey": self.journeys})
            if k == len(path) - 1:
                old = self.state[target].colour
                new = self.state[mover].colour
                self.state[target].colour = new
                self.emit(slot + k, {"type": "stop", "object": mover, "region": region,
                                     "cause_object": target, "journey": self.journeys})
                self.emit(slot + k, {"type": "recolour", "object": target, "from_colour": old,
                                     "to_colour": new, "cause_object": mover,
                                     "journey": self.journeys})
            else:
                self.snapshot()
        self.resting = {mover}
        return len(path)

    def snapshot(self) -> None:
        self.states.append({o: s.copy() for o, s in self.state.items()})
        for s in self.state.values():
            s.big = False  # a pulse lasts one slot

    def run(self) -> None:
        self.appear(0)
        self.snapshot()
        slot = 1
        while slot < self.num_slots:
            weights = self.candidates(slot, self.num_slots - slot)
            if not weights:
                raise RuntimeError(f"no feasible event at slot {slot}")  # cannot happen: pulse
            kinds = sorted(weights)
            p = np.array([weights[k] for k in kinds])
            kind = kinds[int(self.rng.choice(len(kinds), p=p / p.sum()))]
            resting_before = set(self.resting)
            used = self.step(slot, kind)
            if kind != "journey" and self.resting == resting_before:
                self.resting = set()
            self.snapshot()
            slot += used


def build_world(seed_seq: np.random.SeedSequence, duration_s: float, fps: float, num_slots: int,
                num_objects: int, move_frac: float, max_recolours: int = -1) -> dict:
    """The event log of one video (JSON-able): slots, per-slot states and events with times."""
    if num_slots < 6:
        raise ValueError(f"num_slots must be >= 6, got {num_slots}")
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in [1, {MAX_OBJECTS}], got {num_objects}")
    if not 0.0 <= move_frac < 0.9:
        raise ValueError(f"move_frac must be in [0, 0.9), got {move_frac}")
    script = _Script(np.random.default_rng(seed_seq), num_slots, num_objects, max_recolours)
    script.run()
    slot_s = duration_s / num_slots
    states = []
    for i, st in enumerate(script.states):
        t0 = i * slot_s
        states.append({
            "slot": i,
            "t_start_s": round(t0, 4),
            "hold_start_s": round(t0 + move_frac * slot_s, 4),
            "t_end_s": round(t0 + slot_s, 4),
            "objects": {o: {"visible": s.visible, "region": s.region, "colour": s.colour,
                            "big": s.big} for o, s in st.items() if s.appeared},
        })
    for ev in script.events:
        ev["t_s"] = round(ev["slot"] * slot_s, 4)
    return {
        "log_version": LOG_VERSION,
        "duration_s": duration_s,
        "fps": fps,
        "num_slots": num_slots,
        "slot_s": slot_s,
        "move_frac": move_frac,
        "regions": list(REGIONS),
        "grid": [GRID_ROWS, GRID_COLS],
        "objects": script.objects,
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "background": list(BACKGROUND),
        "states": states,
        "events": script.events,
    }


def min_frames_to_see_all(log: dict) -> int:
    """Uniform samples needed so that every slot's still (hold) part holds at least one frame.

    A sample at time t decodes frame floor(t * fps), up to one frame earlier than t, so the
    usable part of a hold is one frame shorter; samples `duration / N` apart must fit in it."""
    usable = log["slot_s"] * (1.0 - log["move_frac"]) - 1.0 / log["fps"]
    if usable <= 0:
        raise ValueError("slots too short for this fps: a still state lasts under one frame")
    return int(np.ceil(log["duration_s"] / usable))
