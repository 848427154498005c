"""Verifiable questions from a synthetic event log (answers and reasoning follow from the log).

Generator task types and the LongVideo-Reason category each maps onto:

    temporal_order  Temporal          which event came first / last / right after another
    counting        Temporal          how many times an object grew large, changed colour, moved
    spatial_when    Spatial           where object X was when event Y happened
    cause           Goal & Purpose    why X stopped moving, why Y changed colour, what made it
    state_change    Plot & Narrative  an object's colour before/after events, its colour history

Each task has multiple-choice and open-ended (numeric or short text) forms. Only unambiguous
questions are produced: anchor events must be unique in the log, option texts distinct.
The output is a reply in the qa_reply schema, parsed by data_gen.qa_format like any model's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from data_gen.schema import OPTION_LETTERS

SUBCATEGORIES = {
    "temporal_order": "Temporal",
    "counting": "Temporal",
    "spatial_when": "Spatial",
    "cause": "Goal & Purpose",
    "state_change": "Plot & Narrative",
}
SALIENT = ("appear", "leave", "move", "journey_step", "recolour", "pulse", "stop")


def past(ev: dict) -> str:
    """Short past-tense phrase for an event ('the circle turned red')."""
    o, k = f"the {ev['object']}", ev["type"]
    if k == "appear":
        return f"{o} appeared"
    if k == "leave":
        return f"{o} left the scene"
    if k in ("move", "journey_step"):
        return f"{o} moved from the {ev['from_region']} to the {ev['to_region']} region"
    if k == "recolour":
        return f"{o} turned {ev['to_colour']}"
    if k == "pulse":
        return f"{o} grew large"
    if k == "stop":
        return f"{o} stopped in the {ev['region']} region"
    raise ValueError(k)


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _at(ev: dict) -> str:
    return f"at {ev['t_s']:.1f} s"


class _Builder:
    def __init__(self, log: dict, rng: np.random.Generator, canonical_options: bool = False):
        self.log, self.rng, self.canonical = log, rng, canonical_options
        self.events = [e for e in log["events"] if e["type"] in SALIENT]
        counts: dict[str, int] = {}
        for e in self.events:
            counts[past(e)] = counts.get(past(e), 0) + 1
        # Events whose phrase occurs once can anchor "when ..." questions without ambiguity.
        self.unique = [e for e in self.events if counts[past(e)] == 1]
        self.appeared = [e["object"] for e in log["events"] if e["type"] == "appear"]

    def state(self, slot: int) -> dict:
        return self.log["states"][slot]["objects"]

    def mc(self, sub: str, question: str, correct: str, distractors: list[str], reasoning: str,
           n_options: int = 4, brief: str = "", palette: list[str] | None = None) -> dict | None:
        pool = [d for d in dict.fromkeys(distractors) if d.lower() != correct.lower()]
        if not pool:
            return None
        picks = [pool[i] for i in self.rng.permutation(len(pool))[: n_options - 1]]
        options = picks + [correct]
        options = [options[i] for i in self.rng.permutation(len(options))]
        if self.canonical and palette:
            # the canonical-options rung: every colour, in palette order, so the letter is a
            # fixed function of the colour (the draws above still run: the rng stream, and so
            # every other question, stays that of the shuffled rung)
            options = list(palette)
        letter = OPTION_LETTERS[options.index(correct)]
        return {"question": question, "category": SUBCATEGORIES[sub], "subcategory": sub,
                "answer_type": "multiple_choice", "options": options, "answer": letter,
                "reasoning": f"{reasoning} So the answer is {letter}: {correct}.",
                "brief": f"{brief} So the answer is {letter}." if brief else f"The answer is {letter}: {correct}."}

    def open(self, sub: str, question: str, answer: str | int, reasoning: str, brief: str = "") -> dict:
        numeric = isinstance(answer, int)
        return {"question": question, "category": SUBCATEGORIES[sub], "subcategory": sub,
                "answer_type": "numeric" if numeric else "open_ended", "options": [],
                "answer": str(answer), "reasoning": f"{reasoning} So the answer is {answer}.",
                "brief": brief or f"The answer is {answer}."}

    # -- Temporal ---------------------------------------------------------------------------
    def temporal_order(self) -> list[dict]:
        out = []
        ev = self.unique
        if len(ev) >= 4:
            idx = sorted(self.rng.choice(len(ev), size=4, replace=False))
            chosen = [ev[i] for i in idx]
            if len({e["slot"] for e in chosen}) == 4:
                for which, pick in (("first", chosen[0]), ("last", chosen[-1])):
                    times = "; ".join(f"{past(e)} {_at(e)}" for e in chosen)
                    q = self.mc("temporal_order", f"Which of these happened {which} in the video?",
                                _cap(past(pick)), [_cap(past(e)) for e in chosen if e is not pick],
                                f"From the video: {times}. The {which} of them is {past(pick)} {_at(pick)}.")
                    if q:
                        out.append(q)
        by_slot: dict[int, list[dict]] = {}
        for e in self.events:
            by_slot.setdefault(e["slot"], []).append(e)
        for a in ev:
            nxt = by_slot.get(a["slot"] + 1, [])
            if len(by_slot[a["slot"]]) == 1 and len(nxt) == 1 and nxt[0] in ev:
                b = nxt[0]
                others = [_cap(past(e)) for e in ev if e["slot"] > b["slot"] + 1 or e["slot"] < a["slot"]]
                q = self.mc("temporal_order", f"What happened right after {past(a)}?",
                            _cap(past(b)), others,
                            f"{_cap(past(a))} {_at(a)}; the next thing to happen is that {past(b)} {_at(b)}.")
                if q:
                    out.append(q)
                break
        if len(self.appeared) >= 2:
            apps = [e for e in self.log["events"] if e["type"] == "appear"]
            seq = "; ".join(f"the {e['object']} {_at(e)}" for e in apps)
            out.append(self.open("temporal_order", "Which object appeared first? Answer with its shape.",
                                 apps[0]["object"], f"Objects appear in this order: {seq}."))
            out.append(self.open("temporal_order", "Which object was the last to appear? Answer with its shape.",
                                 apps[-1]["object"], f"Objects appear in this order: {seq}."))
        return out

    def counting(self) -> list[dict]:
        out = []
        pulses = {o: [e for e in self.events if e["type"] == "pulse" and e["object"] == o] for o in self.appeared}
        for o in sorted(pulses, key=lambda o: -len(pulses[o])):
            when = ", ".join(f"{e['t_s']:.1f} s" for e in pulses[o]) or "never"
            out.append(self.open("counting", f"How many times did the {o} grow large?", len(pulses[o]),
                                 f"The {o} grows large at: {when}. That is {len(pulses[o])} times."))
        for o in self.appeared:
            rec = [e for e in self.events if e["type"] == "recolour" and e["object"] == o]
            when = "; ".join(f"{e['from_colour']} to {e['to_colour']} {_at(e)}" for e in rec) or "never"
            out.append(self.open("counting", f"How many times did the {o} change colour?", len(rec),
                                 f"The {o} changes colour: {when}. That is {len(rec)} times."))
            mv = [e for e in self.events if e["type"] in ("move", "journey_step") and e["object"] == o]
            when = "; ".join(f"to the {e['to_region']} {_at(e)}" for e in mv) or "never"
            out.append(self.open("counting", f"How many times did the {o} move to a different region?",
                                 len(mv), f"The {o} moves: {when}. That is {len(mv)} times."))
        seq = ", ".join(f"the {o}" for o in self.appeared)
        out.append(self.open("counting", "How many different objects appeared during the video?",
                             len(self.appeared), f"The objects that appear are {seq}."))
        return out

    # -- Spatial ----------------------------------------------------------------------------
    def spatial_when(self) -> list[dict]:
        out = []
        regions = self.log["regions"]
        for ev in self.unique:
            now = self.state(ev["slot"])
            before = self.state(ev["slot"] - 1) if ev["slot"] > 0 else {}
            for x, st in now.items():
                if not st["visible"] or x == ev["object"]:
                    continue
                if not before.get(x, {}).get("visible") or before[x]["region"] != st["region"]:
                    continue  # x must be standing still in view while the event happens
                why = (f"{_cap(past(ev))} {_at(ev)}. At that moment the {x} is in the "
                       f"{st['region']} region.")
                q = f"Where was the {x} when {past(ev)}?"
                brief = f"Then the {x} is in the {st['region']} region."
                mc = self.mc("spatial_when", q, st["region"], [r for r in regions if r != st["region"]], why,
                             brief=brief)
                if mc:
                    out.append(mc)
                out.append(self.open("spatial_when", q + " Answer with the region name.", st["region"], why,
                                     brief))
        return out

    # -- Goal & Purpose ---------------------------------------------------------------------
    def cause(self) -> list[dict]:
        out = []
        stops = [e for e in self.log["events"] if e["type"] == "stop"]
        for stop in stops:
            m, t = stop["object"], stop["cause_object"]
            rec = next(e for e in self.log["events"] if e["type"] == "recolour"
                       and e.get("journey") == stop["journey"])
            steps = [e for e in self.log["events"] if e["type"] == "journey_step"
                     and e.get("journey") == stop["journey"]]
            trip = ", ".join(f"the {e['to_region']} {_at(e)}" for e in steps)
            why = (f"The {m} travels region by region ({trip}). In the {stop['region']} region it "
                   f"meets the {t}, stops there, and the {t} changes from {rec['from_colour']} to "
                   f"{rec['to_colour']}, the {m}'s colour.")
            others = [o for o in self.log["objects"] if o not in (m, t)]
            q = f"Why did the {m} stop moving when it reached the {stop['region']} region?"
            d = [f"It reached the {o}" for o in others] + ["It changed colour", "It grew large",
                                                           "It reached the edge of the screen"]
            if mc := self.mc("cause", q, f"It reached the {t}", d, why):
                out.append(mc)
            turned = [e for e in self.log["events"] if e["type"] == "recolour" and e["object"] == t
                      and e["to_colour"] == rec["to_colour"]]
            when = "" if len(turned) == 1 else f" at about {rec['t_s']:.0f} s"
            q = f"Why did the {t} turn {rec['to_colour']}{when}?"
            d = [f"The {o} travelled to it and touched it" for o in others] + [
                "It grew large", "It moved to another region", "It left the scene and came back"]
            if mc := self.mc("cause", q, f"The {m} travelled to it and touched it", d, why):
                out.append(mc)
            out.append(self.open("cause", f"Which object made the {t} turn {rec['to_colour']}{when}? "
                                 "Answer with its shape.", m, why))
            out.append(self.open("cause", f"What did the {m} reach that made it stop in the "
                                 f"{stop['region']} region? Answer with its shape.", t, why))
        return out

    # -- Plot & Narrative -------------------------------------------------------------------
    def state_change(self) -> list[dict]:
        out = []
        colours = list(self.log["colours"])
        final = self.log["states"][-1]["objects"]
        for o in self.appeared:
            app = next(e for e in self.log["events"] if e["type"] == "appear" and e["object"] == o)
            rec = [e for e in self.log["events"] if e["type"] == "recolour" and e["object"] == o]
            hist = [app["colour"]] + [e["to_colour"] for e in rec]
            story = f"The {o} appears {_at(app)} coloured {app['colour']}" + "".join(
                f", turns {e['to_colour']} {_at(e)}" for e in rec) + "."
            first_q = f"What colour was the {o} when it first appeared?"
            first_b = f"The {o} appears coloured {app['colour']}."
            out.append(self.open("state_change", first_q, app["colour"], story, first_b))
            others = [c for c in colours if c != app["colour"]]
            if mc := self.mc("state_change", first_q, app["colour"], others, story, brief=first_b,
                             palette=colours):
                out.append(mc)
            if final[o]["visible"]:
                end_q = f"What colour was the {o} at the end of the video?"
                end_b = f"At the end the {o} is {final[o]['colour']}."
                out.append(self.open("state_change", end_q, final[o]["colour"],
                                     story + f" It is still {hist[-1]} at the end.", end_b))
                others = [c for c in colours if c != final[o]["colour"]]
                if mc := self.mc("state_change", end_q, final[o]["colour"], others,
                                 story + f" It is still {hist[-1]} at the end.", brief=end_b, palette=colours):
                    out.append(mc)
            else:
                lv = next(e for e in self.log["events"] if e["type"] == "leave" and e["object"] == o)
                q = f"What colour was the {o} just before it left the scene?"
                if mc := self.mc("state_change", q, final[o]["colour"],
                                 [c for c in colours if c != final[o]["colour"]],
                                 story + f" It leaves {_at(lv)} while {final[o]['colour']}.", palette=colours):
                    out.append(mc)
            if len(hist) >= 3:
                correct = ", then ".join(hist)
                wrong = []
                for _ in range(12):
                    perm = [hist[i] for i in self.rng.permutation(len(hist))]
                    if any(a == b for a, b in zip(perm, perm[1:], strict=False)):
                        continue  # a colour never "changes" to itself
                    wrong.append(", then ".join(perm))
                if mc := self.mc("state_change", f"In what order did the {o} take these colours?",
                                 correct, wrong, story):
                    out.append(mc)
            for e in rec:
                if e.get("cause_object"):
                    q = f"What colour was the {o} just before the {e['cause_object']} touched it?"
                    if mc := self.mc("state_change", q, e["from_colour"],
                                     [c for c in colours if c != e["from_colour"]],
                                     story + f" The {e['cause_object']} touches it {_at(e)}, when it "
                                     f"was {e['from_colour']}.", palette=colours):
                        out.append(mc)
        return out


REASONING_STYLES = ("full", "brief")


def make_questions(log: dict, rng: np.random.Generator, count: int,
                   task_types: tuple[str, ...] | list[str] = (), reasoning: str = "full",
                   canonical_options: bool = False) -> dict:
    """Up to `count` questions in the qa_reply schema, spread over the task types and answer
    types in turn (round robin), each question text at most once (a text asked in both answer
    forms counts once per form).

    `task_types` keeps only those generator tasks (empty: all; the rungs of a task ladder);
    `reasoning` "full" is the step-by-step account from the log, "brief" the one decisive fact
    (short targets a small model can learn from few examples); `canonical_options` lists every
    colour in palette order as the options of colour multiple-choice questions (chance
    1/len(palette); the letter is then a fixed function of the colour)."""
    if reasoning not in REASONING_STYLES:
        raise ValueError(f"reasoning {reasoning!r} not in {REASONING_STYLES}")
    unknown = sorted(set(task_types) - set(SUBCATEGORIES))
    if unknown:
        raise ValueError(f"unknown task types {unknown}; known: {sorted(SUBCATEGORIES)}")
    b = _Builder(log, rng, canonical_options)
    makers: dict[str, Callable[[], list[dict]]] = {
        "temporal_order": b.temporal_order, "counting": b.counting,
        "spatial_when": b.spatial_when, "cause": b.cause, "state_change": b.state_change,
    }
    if task_types:
        makers = {k: v for k, v in makers.items() if k in task_types}
    pools: dict[str, dict[bool, list[dict]]] = {}
    for sub, make in makers.items():
        items = make()
        items = [items[i] for i in rng.permutation(len(items))]
        pools[sub] = {True: [q for q in items if q["answer_type"] == "multiple_choice"],
                      False: [q for q in items if q["answer_type"] != "multiple_choice"]}
    chosen: list[dict] = []
    seen: set[tuple[str, str]] = set()
    want_mc = True
    while len(chosen) < count and any(p[True] or p[False] for p in pools.values()):
        for sub in makers:
            if len(chosen) >= count:
                break
            pool = pools[sub][want_mc] or pools[sub][not want_mc]
            while pool:
                q = pool.pop()
                key = (q["question"], q["answer_type"])
                if key not in seen:
                    seen.add(key)
                    brief = q.pop("brief")
                    if reasoning == "brief":
                        q["reasoning"] = brief
                    chosen.append(q)
                    break
            want_mc = not want_mc
    return {"questions": chosen}
