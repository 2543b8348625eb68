"""The synthetic visual-math suite: content-disjoint splits, problems, their images, gold steps and the oracle
that knows every step's truth. (Who writes answers to these problems is policy.py.)

Two families, as MathVerse's text-dominant vs vision-dominant split (ViLBench Table 1):
- visual: the counts are only in the image (count_add: red + blue; count_diff: how many more A than B).
- text: the numbers are in the question, the image only illustrates (rect_perimeter; shop_total).
Every step states numbers; the oracle knows each step's truth. A wrong value is drawn from the same range as a
right one, so a number alone says nothing about its truth; a trapped problem has one step most samples get wrong
the same way, so majority voting can fail (as with real models). Splits (SPLITS) are disjoint by content: a
problem's split is a function of its kind and values, never of its id or layout.
"""
import functools
import hashlib
import operator
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from common import data
from common.answers import numbers

IMAGE_SIZE, CELL = 64, 8  # 8 px shapes on the 8x8 grid of 8 px vision patches (tiny.PATCH)
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (235, 200, 20)}
KINDS = {"count_add": "visual", "count_diff": "visual", "rect_perimeter": "text", "shop_total": "text"}
# A program per kind: ("count", colour_slot) reads the image; ("arith", op, a, b) with operands ("s", i) a previous
# step's claimed value, ("f", name) a number of the question, ("c", k) a constant; ("answer", i) restates step i.
PROGRAMS = {
    "count_add": [("count", "A"), ("count", "B"), ("arith", "+", ("s", 0), ("s", 1)), ("answer", 2)],
    "count_diff": [("count", "A"), ("count", "B"), ("arith", "-", ("s", 0), ("s", 1)), ("answer", 2)],
    "rect_perimeter": [("arith", "+", ("f", "w"), ("f", "h")), ("arith", "*", ("c", 2), ("s", 0)), ("answer", 1)],
    "shop_total": [("arith", "*", ("f", "n"), ("f", "c")), ("arith", "+", ("s", 0), ("f", "k")), ("answer", 1)],
}
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@dataclass(frozen=True)
class Suite:
    """Difficulty knobs. The defaults leave headroom: the tiny base does not solve every kind."""
    count_max: int = 7  # counts drawn from 1..count_max
    distractors: int = 4  # up to this many shapes of other colours
    num_max: int = 9  # question numbers drawn from 2..num_max
    trap_rate: float = 0.3  # share of problems with a systematic error most samples share
    trap_p: float = 0.6  # how often a sample falls into the trap
    kinds: tuple = tuple(KINDS)


def seed_of(*parts):
    """A stable per-item seed (Python's hash() of a str changes between processes)."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12], 16)


# Splits are disjoint by content (docs/DESIGN.md "Evidence"): every distinct content of a kind (the values that define the
# question and its answer, never the layout, the distractors or the id) belongs to exactly one split, so no test
# problem's content is in train, tune, dev, the tiny base's pretraining stream or the labelling pool.
SPLITS = {"train": 0.6, "tune": 0.1, "dev": 0.1, "test": 0.2}


def contents(kind, suite=Suite()):
    """Every distinct content of a kind: (A, B, count A, count B) | (w, h) | (pens, price, book)."""
    if KINDS[kind] == "visual":
        n = range(1, suite.count_max + 1)
        pairs = [(x, y) for x in n for y in n if kind == "count_add" or x > y]
        return [(a, b, x, y) for a in COLOURS for b in COLOURS if a != b for x, y in pairs]
    nums = range(2, suite.num_max + 1)
    if kind == "rect_perimeter":
        return [(w, h) for w in nums for h in nums]
    return [(n, c, k) for n in range(2, 6) for c in nums for k in nums]


@functools.lru_cache(maxsize=None)
def split_contents(kind, suite=Suite()):
    """{split: [content, ...]}: a kind's contents ranked by a fixed hash (no seed: the splits never move), then cut
    in the SPLITS shares. The same for every run seed, so the shipped tiny base stays on the train side."""
    ranked = sorted(contents(kind, suite), key=lambda c: seed_of("content-split", kind, *c))
    out, start = {}, 0
    for i, (name, share) in enumerate(SPLITS.items()):
        end = len(ranked) if i == len(SPLITS) - 1 else start + round(share * len(ranked))
        out[name] = ranked[start:end]
        start = end
    return out


def content_of(prob):
    """The content key of a problem (its kind and values): what the splits are disjoint on."""
    f = prob["facts"]
    if prob["family"] == "visual":
        return prob["kind"], (f["A"], f["B"], f[f["A"]], f[f["B"]])
    return prob["kind"], tuple(f[k] for k in (("w", "h") if prob["kind"] == "rect_perimeter" else ("n", "c", "k")))


def split_of(prob, suite=Suite()):
    kind, c = content_of(prob)
    return next(s for s, cs in split_contents(kind, suite).items() if c in cs)


def make_problem(pid, seed, suite=Suite(), kind=None, split="train", content=None):
    """One problem of `split`: its content drawn from that split's contents (or given), its layout, distractors
    and trap from a generator seeded by (seed, pid)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {list(SPLITS)}")
    rng = random.Random(seed_of(seed, pid))
    kind = kind or rng.choice(list(suite.kinds))
    content = content or rng.choice(split_contents(kind, suite)[split])
    f = {}
    if KINDS[kind] == "visual":
        a, b, na, nb = content
        f["A"], f["B"], f[a], f[b] = a, b, na, nb
        f.update({c: rng.randint(0, suite.distractors // 2) for c in COLOURS if c not in (a, b)})  # in COLOURS order
        q = (f"How many {a} and {b} shapes are there in total?" if kind == "count_add"
             else f"How many more {a} shapes than {b} shapes are there?")
    elif kind == "rect_perimeter":
        f["w"], f["h"] = content
        q = f"A rectangle has width {f['w']} and height {f['h']}. What is its perimeter?"
    else:
        f["n"], f["c"], f["k"] = content
        q = f"Tom buys {f['n']} pens that cost {f['c']} dollars each and a book that costs {f['k']} dollars. How much does he pay?"
    prob = {"id": pid, "question": q, "family": KINDS[kind], "kind": kind, "facts": f, "split": split,
            "layout_seed": rng.randrange(2**31)}
    prob["answer"] = str(gold_values(prob)[-1])
    perception = [i for i, s in enumerate(PROGRAMS[kind]) if s[0] == "count" or (s[0] == "arith" and "f" in (s[2][0], s[3][0]))]
    if rng.random() < suite.trap_rate:  # a systematic error: most samples misread this step the same way
        step = rng.choice(perception)
        prob["trap"] = {"step": step, "offset": rng.choice([-1, 1]), "p": suite.trap_p}
    return prob


def make_problems(n, seed=0, split="train", suite=Suite()):
    """n problems of `split`, the kinds in turn (balanced families). Each kind walks a seeded shuffle of the split's
    contents, so a content repeats only once all of them are used; problem i depends only on (seed, split, i)."""
    order = {}
    for kind in suite.kinds:
        cs = list(split_contents(kind, suite)[split] if split in SPLITS else [])
        random.Random(seed_of(seed, split, kind)).shuffle(cs)
        order[kind] = cs
    out = []
    for i in range(n):
        kind = suite.kinds[i % len(suite.kinds)]
        cs = order[kind] or [None]
        out.append(make_problem(f"{split}-{i:05d}", seed, suite, kind, split, cs[(i // len(suite.kinds)) % len(cs)]))
    return out


def render(prob):
    """The problem's image (PIL, 64x64). Visual kinds: every shape fills one patch cell, so the tiny model can count."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    d = ImageDraw.Draw(img)
    rng = random.Random(prob["layout_seed"])
    f, g = prob["facts"], IMAGE_SIZE // CELL
    if prob["family"] == "visual":
        shapes = [c for c in COLOURS for _ in range(f.get(c, 0))]
        for c, cell in zip(shapes, rng.sample(range(g * g), len(shapes))):
            x, y = (cell % g) * CELL, (cell // g) * CELL
            box = (x, y, x + CELL - 1, y + CELL - 1)
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=COLOURS[c])
    elif prob["kind"] == "rect_perimeter":
        w, h = f["w"] * 5, f["h"] * 5
        d.rectangle((32 - w // 2, 32 - h // 2, 32 + w // 2, 32 + h // 2), outline=(40, 40, 40), width=2)
    else:
        for i in range(f["n"]):
            d.rectangle((6 + 8 * i, 10, 9 + 8 * i, 40), fill=(30, 60, 220))
        d.rectangle((40, 40, 58, 58), fill=(150, 90, 40))
    return img


def image_of(prob):
    """A problem's image: its file when it has one, else rendered."""
    return data.open_image(prob["image"], f"problem {prob['id']}") if prob.get("image") else render(prob)


def operand(prob, ref, values):
    """The value of an operand of a program step: ("s", i) step i's claimed value, ("f", name) a number of the
    question, ("c", k) the constant k."""
    kind, x = ref
    if kind == "s":
        return values[x]
    if kind == "f":
        return prob["facts"][x]
    return x


def step_text(prob, spec, nums):
    """The text of one step from its numbers: count (v), arith (a, b, r), answer (v)."""
    if spec[0] == "count":
        return f"There are {nums[0]} {prob['facts'][spec[1]]} shapes."
    if spec[0] == "arith":
        return f"{nums[0]} {spec[1]} {nums[1]} = {nums[2]}."
    return f"The answer is {nums[0]}."


def gold_steps(prob):
    """[(text, step_kind, numbers)] of the gold solution; step_kind is count | arith | text_arith | answer."""
    out, values = [], []
    for spec in PROGRAMS[prob["kind"]]:
        if spec[0] == "count":
            nums = [prob["facts"][prob["facts"][spec[1]]]]
        elif spec[0] == "arith":
            a, b = operand(prob, spec[2], values), operand(prob, spec[3], values)
            nums = [a, b, OPS[spec[1]](a, b)]
        else:
            nums = [values[spec[1]]]
        values.append(nums[-1])
        kind = spec[0] if spec[0] != "arith" or prob["family"] == "visual" else "text_arith"
        out.append((step_text(prob, spec, nums), kind, nums))
    return out


def gold_values(prob):
    return [nums[-1] for _, _, nums in gold_steps(prob)]


FORMATS = ("step", "numbered", "plain", "paragraph")
# The paragraph writer opens a third of its count and arithmetic steps with a sentence of reasoning, so its sentences
# are not its steps: sentence splitting gets the count of about 37% of paragraphs, as of real ones.
LEADS = {"count": "I look for the {} shapes in the picture.", "+": "Adding the two numbers gives the total.",
         "-": "Subtracting gives the difference.", "*": "Multiplying the two numbers gives the product."}


def format_steps(steps, fmt="step"):
    """Join steps as a writer would: "Step k:" lines, "k." lines, plain lines, or one paragraph where a step may
    open with a sentence of reasoning (LEADS; drawn from the steps' text, so the same steps, the same paragraph)."""
    if fmt == "step":
        return "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps))
    if fmt == "numbered":
        return "\n".join(f"{i + 1}. {s}" for i, s in enumerate(steps))
    if fmt == "plain":
        return "\n".join(steps)
    rng = random.Random(seed_of("paragraph", *steps))
    kinds = [re.match(r"There are \d+ (\w+) |-?\d+ ([-+*]) ", s) for s in steps]  # a count (colour), arith (op)
    return " ".join((LEADS[m[2] or "count"].format(m[1]) + " " if m and rng.random() < 1 / 3 else "") + s
                    for m, s in zip(kinds, steps))


def first_error(prob, steps):
    """The oracle: index of the first wrong step, or -1. A step is right when it states the gold step's numbers
    (as a multiset); later steps count as wrong (ProcessBench). A solution that stops before the answer has its
    last step wrong (it ends the solution too early)."""
    gold = gold_steps(prob)
    for i, s in enumerate(steps):
        if i >= len(gold) or sorted(numbers(s)) != sorted(float(x) for x in gold[i][2]):
            return i
    return -1 if len(steps) >= len(gold) else max(len(steps) - 1, 0)


def step_labels(prob, steps):
    fe = first_error(prob, steps)
    return [1.0 if fe == -1 or i < fe else 0.0 for i in range(len(steps))]


def labelled(prob, cand, image):
    """The oracle's step labels in the step-labelled (TRL PRM + images) format."""
    return {"id": cand["id"], "images": [image], "prompt": prob["question"], "completions": cand["steps"],
            "labels": step_labels(prob, cand["steps"]), "first_error": first_error(prob, cand["steps"])}


def write_problems(out, probs, name="problems.jsonl"):
    """Render each problem to OUT/images/ID.png, point its "image" there (relative to OUT) and write OUT/NAME."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for p in probs:
        render(p).save(out / "images" / f"{p['id']}.png")
        p["image"] = f"images/{p['id']}.png"
    data.write_jsonl(out / name, probs, "problem")
    return probs



def world(problems, candidates):
    """How a pool's answers reach their answers, by the oracle, per kind and over all: {kind: {"answers", "right",
    "lucky" (the share of right answers with a wrong step: right by luck), "faithful" (every step right), "steps"
    (per answer), "first_error_at" ({"k": answers whose first wrong step is step k})}}."""
    kind_of = {p["id"]: p["kind"] for p in problems}
    groups = {}
    for c in candidates:
        if c.get("first_error") is None or c["problem_id"] not in kind_of:
            continue
        for kind in (kind_of[c["problem_id"]], "all"):
            groups.setdefault(kind, []).append(c)
    out = {}
    for kind in sorted(groups, key=lambda k: (k == "all", k)):
        cs = groups[kind]
        right = [c for c in cs if c["correct"]]
        at = {}
        for c in cs:
            if c["first_error"] >= 0:
                at[str(c["first_error"] + 1)] = at.get(str(c["first_error"] + 1), 0) + 1
        out[kind] = {"answers": len(cs), "right": round(len(right) / len(cs), 4),
                     "lucky": round(sum(c["first_error"] != -1 for c in right) / max(len(right), 1), 4),
                     "faithful": round(sum(c["first_error"] == -1 for c in cs) / len(cs), 4),
                     "steps": round(sum(len(c["steps"]) for c in cs) / len(cs), 2),
                     "first_error_at": dict(sorted(at.items()))}
    return out
