"""`longrl synth --kind text`: seeded, verifiable math and logic word problems (text-only records).

Each problem is built from drawn numbers/names and solved by the generator itself, so the answer
is known exactly and the reasoning (the CoT-SFT target) is the generator's own worked solution.
Three answer forms, the three verifiable rewards of GRPO (training.grpo.rewards):
- numeric (graded with the numeric tolerance): multi-step arithmetic, rates, number sequences;
- multiple choice (option letter): comparisons whose options are shuffled with the seed;
- open-ended exact (source "synth-text", graded by common.short_answers, no judge): the
  name that solves an ordering puzzle.

Layout of DIR (read by `load_records` like any split folder):

    DIR/questions.jsonl   every record (QARecord, modality "text", category Math or Logic)
    DIR/sft.jsonl, rl.jsonl, eval.jsonl   the same records split disjointly (fractions below)
    DIR/manifest.json     {"format": "longrl-synth-text", "version", "config", "counts"}

Everything follows from the config (seed included): the same config writes the same bytes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_gen.schema import OPTION_LETTERS, QARecord, question_id

SOURCE = "synth-text"
VERSION = "1"
KINDS = ("arithmetic", "rate", "sequence", "compare", "ordering")
NAMES = ("Ana", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jon", "Kim", "Leo")
ITEMS = ("apples", "books", "coins", "pens", "stamps", "marbles", "cards", "shells")


@dataclass
class TextSynthConfig:
    """Settings of `longrl synth --kind text`."""

    problems: int = 200  # records written (distinct questions)
    seed: int = 0
    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # problem kinds drawn from
    max_value: int = 20  # largest drawn operand (difficulty)
    sft_fraction: float = 0.4  # split fractions (the rest is eval)
    rl_fraction: float = 0.4

    def check(self) -> None:
        if self.problems < 1:
            raise ValueError(f"problems must be >= 1, got {self.problems}")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds {unknown or self.kinds} not usable; known kinds: {list(KINDS)}")
        if self.max_value < 3:
            raise ValueError(f"max_value must be >= 3, got {self.max_value}")
        if min(self.sft_fraction, self.rl_fraction) < 0 or self.sft_fraction + self.rl_fraction > 1:
            raise ValueError(f"sft_fraction {self.sft_fraction} + rl_fraction {self.rl_fraction} must lie in [0, 1]")


def _num(x: float) -> str:
    """A number as written in an answer: integers without '.0', else up to 4 decimals."""
    return str(int(x)) if float(x).is_integer() else f"{x:.4f}".rstrip("0")


def _arithmetic(rng: random.Random, hi: int) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    boxes, per, given, found = rng.randint(2, hi), rng.randint(2, hi), rng.randint(1, hi), rng.randint(1, hi)
    total = boxes * per
    given = min(given, total)
    left = total - given + found
    q = (f"{name} has {boxes} boxes with {per} {item} in each. {name} gives away {given} {item} "
         f"and then finds {found} more. How many {item} does {name} have now?")
    r = (f"{boxes} boxes of {per} make {boxes} * {per} = {total} {item}. Giving away {given} leaves "
         f"{total} - {given} = {total - given}. Finding {found} more gives {total - given} + {found} = {left}.")
    return {"question": q, "answer": _num(left), "answer_type": "numeric", "category": "Math",
            "reasoning": r, "options": []}


def _rate(rng: random.Random, hi: int) -> dict:
    speed = rng.randint(2, hi) * 5
    hours = rng.choice([0.5, 1.5, 2.5, 0.25, 1.25]) + rng.randint(0, 3)
    dist = speed * hours
    q = f"A train travels at {speed} km per hour for {_num(hours)} hours. How many kilometres does it travel?"
    r = f"Distance is speed times time: {speed} * {_num(hours)} = {_num(dist)} km."
    return {"question": q, "answer": _num(dist), "answer_type": "numeric", "category": "Math",
            "reasoning": r, "options": []}


def _sequence(rng: random.Random, hi: int) -> dict:
    start, step, n = rng.randint(1, hi), rng.randint(2, max(3, hi // 2)), rng.randint(4, 6)
    terms = [start + i * step for i in range(n)]
    nxt = terms[-1] + step
    q = f"What number comes next in the sequence {', '.join(map(str, terms))}?"
    r = f"Each term adds {step} to the one before, so the next is {terms[-1]} + {step} = {nxt}."
    return {"question": q, "answer": str(nxt), "answer_type": "numeric", "category": "Logic",
            "reasoning": r, "options": []}


def _compare(rng: random.Random, hi: int) -> dict:
    names = rng.sample(NAMES, 4)
    counts = rng.sample(range(1, 4 * hi), 4)
    item = rng.choice(ITEMS)
    parts = [f"{n} has {c} {item}" for n, c in zip(names, counts, strict=True)]
    best = names[counts.index(max(counts))]
    options = names[:]
    rng.shuffle(options)
    q = f"{'; '.join(parts)}. Who has the most {item}?"
    r = f"Comparing {', '.join(map(str, counts))}, the largest is {max(counts)}, which {best} has."
    return {"question": q, "answer": OPTION_LETTERS[options.index(best)], "answer_type": "multiple_choice",
            "category": "Logic", "reasoning": r, "options": options}


def _ordering(rng: random.Random, hi: int) -> dict:
    people = rng.sample(NAMES, rng.randint(3, 4))  # tallest first
    pairs = [(people[i], people[i + 1]) for i in range(len(people) - 1)]
    rng.shuffle(pairs)
    facts = " ".join(f"{a} is taller than {b}." for a, b in pairs)
    shortest = rng.random() < 0.5
    who = people[-1] if shortest else people[0]
    word = "shortest" if shortest else "tallest"
    q = f"{facts} Who is the {word}? Answer with a name."
    r = f"Chaining the facts gives the order from tallest to shortest: {', '.join(people)}. The {word} is {who}."
    return {"question": q, "answer": who, "answer_type": "open_ended", "category": "Logic",
            "reasoning": r, "options": []}


MAKERS = {"arithmetic": _arithmetic, "rate": _rate, "sequence": _sequence, "compare": _compare,
          "ordering": _ordering}


def make_problems(cfg: TextSynthConfig) -> list[QARecord]:
    """`cfg.problems` distinct records (kinds in turn), a function of the config."""
    cfg.check()
    rng = random.Random(f"synth-text-{cfg.seed}")
    gen = json.dumps({"synth_text": VERSION, "seed": cfg.seed})
    out: list[QARecord] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < cfg.problems:
        attempts += 1
        if attempts > 50 * cfg.problems:
            raise ValueError(f"only {len(out)} distinct problems from kinds {cfg.kinds} at max_value "
                             f"{cfg.max_value}; raise max_value or ask for fewer")
        kind = cfg.kinds[len(out) % len(cfg.kinds)]
        p = MAKERS[kind](rng, cfg.max_value)
        qid = question_id("text", p["question"])
        if qid in seen:
            continue
        seen.add(qid)
        out.append(QARecord(id=qid, video_id="", video_path="", subcategory=kind, source=SOURCE,
                            generator=gen, modality="text", **p).validate())
    return out


def split_records(records: list[QARecord], cfg: TextSynthConfig) -> dict[str, list[QARecord]]:
    n_sft = int(len(records) * cfg.sft_fraction)
    n_rl = int(len(records) * cfg.rl_fraction)
    return {"sft": records[:n_sft], "rl": records[n_sft:n_sft + n_rl], "eval": records[n_sft + n_rl:]}


def write_jsonl(path: Path, records: list[QARecord]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    tmp.replace(path)


def generate_text(cfg: TextSynthConfig, out_dir: str | Path) -> dict:
    """Write DIR (layout in the module docstring); returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = make_problems(cfg)
    write_jsonl(out / "questions.jsonl", records)
    splits = split_records(records, cfg)
    for name, recs in splits.items():
        write_jsonl(out / f"{name}.jsonl", recs)
    counts = {"problems": len(records), **{f"split/{k}": len(v) for k, v in splits.items()}}
    for kind in cfg.kinds:
        counts[f"kind/{kind}"] = sum(r.subcategory == kind for r in records)
    manifest = {"format": "longrl-synth-text", "version": VERSION, "config": asdict(cfg), "counts": counts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
