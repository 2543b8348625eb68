"""Reward-guided step search at test time: what a verifier of partial solutions can do that Best-of-N cannot.

    python search.py                                  # the tiny base, 32 test problems: the equal-token table
    python search.py --scorers prm,oracle --b 1 --k 8 # greedy step search (b = 1), 8 proposals a step
    python search.py --prm out/prm --orm out/orm      # other reward models (default: bench's, else the base)
    python search.py --resume                         # a killed run goes on where it stopped
    python -m lab.api search --policy http://localhost:8000/v1 ...   # the policy behind a server

Beam search over steps (the step-level search of VL-PRMs' greedy decoding, openr's beam search): each of b
partial solutions asks the policy for k next steps (policy.next_steps: generation stops at the next step's
marker), a scorer rates every extended partial solution, and the best b go on; a finished solution stays as it
is and competes with the others, until all b have answered; the answer is the best one's. b = 1 is greedy step
search. Scorers (SCORERS): prm (the trained PRM's step scores of the partial solution, aggregated: --agg last,
the newest step's), orm (the ORM read on the prefix), likelihood (the base's own belief in each step), oracle
(the suite's step truth: the ceiling), random (the floor).

Equal compute: every method is charged the tokens its policy generated (the tokenizer's count of the text
it wrote, proposals the search dropped included) and the partial or whole solutions its scorer read (a
forward pass each for a model). Best-of-N, majority and the PRM-weighted vote pick from --pool whole answers
of the same policy (bon.py's exact expectation over N-subsets). At a search's mean tokens, N = tokens / (mean
tokens of an answer) is a fraction, read as the mix of the two whole N around it with those expected tokens.
Differences are paired per problem, with 95% bootstrap intervals over contents (common/metrics.py). Faithful:
the answer's steps are all right by the oracle (bon.every_step_right).

`python search.py` prints which reward models it read, a table of every method (tokens and scored partial
solutions per problem, accuracy and faithful accuracy), then each search minus each Best-of-N method at equal
tokens, for both accuracies; it writes OUT/rows.jsonl (per problem), OUT/table.md and OUT/search.png. With
bench's reward models, 32 test problems (2 minutes of CPU time on 2 cores; 4 minutes beside other jobs):

    | search: prm b=1 | 174 | 4.4 | 0.688 [0.531, 0.844] | 0.562 [0.406, 0.719] |
    | search: oracle b=2 | 349 | 5.2 | 0.969 [0.906, 1.000] | 0.969 [0.906, 1.000] |
    | best_of_n_prm N=4 | 174 | 4 | 0.726 [0.581, 0.861] | 0.575 [0.421, 0.725] |
    | majority N=8 | 349 | 0 | 0.745 [0.602, 0.876] | 0.613 [0.456, 0.764] |
    ...
    | search | tokens | N | best_of_n_prm | best_of_n_orm | majority | weighted_vote |
    | prm b=2 | 349 | 8.0 | -0.012 [-0.038, +0.012] | -0.060 [-0.143, -0.000] | -0.057 [..] | -0.064 [..] |
    | oracle b=2 | 349 | 8.0 | +0.269 [+0.130, +0.420] | +0.221 [+0.096, +0.358] | +0.224 [..] | +0.218 [..] |
"""
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import bon
import orm
import prm
from common import cli, data, metrics, tasks
from common.answers import match_answer
from common.model import load, resolve
from policy import STRENGTHS, SyntheticPolicy, VLMPolicy

MAX_STEPS = 8  # a partial solution this long counts as finished (the suite's solutions have 3 or 4 steps)
SKIPPED = -math.inf  # the score of a partial solution a model could not read (too long): never kept
# The trained reward models search.py reads when none is named: bench's, then the walkthrough's
TRAINED = {"prm": ("out/bench/prm", "out/prm"), "orm": ("out/bench/orm", "out/orm")}
# Best-of-N's rules over the pool's scores (bon.py): the names the tables show
BASELINES = {"best_of_n_prm": "max:prm:{agg}", "best_of_n_orm": "max:orm", "majority": "majority",
             "weighted_vote": "vote:prm:min"}
NS = (1, 2, 4, 8, 16, 32)  # Best-of-N's points on the plot (those within the pool)


@dataclass
class Args:
    policy: str = field(default="tiny", metadata={
        "help": "who proposes the steps: tiny (the shipped base) | synthetic (the suite's sampler) | a "
                "checkpoint folder (a server: python -m lab.api search --policy URL)"})
    scorers: str = field(default="prm,orm,likelihood,oracle,random", metadata={
        "help": "who rates the partial solutions, one search each (comma-separated): prm | orm (read on "
                "the prefix) | likelihood (the base's step likelihood) | oracle (the step truth) | random"})
    k: int = field(default=4, metadata={
        "range": (1, None), "help": "proposals: the next steps the policy writes for each partial solution"})
    b: str = field(default="1,2,4", metadata={
        "help": "beam widths, one search each (comma-separated): the b best partial solutions go on each "
                "round (b = 1: greedy step search)"})
    agg: str = field(default="last", metadata={
        "choices": list(bon.AGGS), "help": "how the prm and likelihood scorers read a partial solution's "
                                           "step scores (bon.AGGREGATIONS; last: the newest step's)"})
    bon_agg: str = field(default="mean", metadata={
        "choices": list(bon.AGGS), "help": "Best-of-N's PRM aggregation of a whole answer (bench's on tune)"})
    pool: int = field(default=16, metadata={
        "range": (1, None), "help": "whole answers per problem for Best-of-N, majority and weighted vote"})
    n_problems: int = field(default=32, metadata={"range": (1, None), "help": "problems (of --split)"})
    prm: str = field(default="auto", metadata={
        "help": "the PRM checkpoint; auto: out/bench/prm, else out/prm, else none (the base's likelihood)"})
    orm: str = field(default="auto", metadata={
        "help": "the ORM checkpoint; auto: out/bench/orm, else out/orm, else none (the base's likelihood of "
                "the whole prefix)"})
    model: str = field(default="tiny", metadata={
        "help": "the base: the likelihood scorer; its tokenizer counts the tokens of a policy without one"})
    temperature: float = field(default=1.0, metadata={"range": (0.0, None), "help": "sampling temperature"})
    max_new_tokens: int = field(default=96, metadata={
        "range": (1, None), "help": "tokens per generation (a step or a whole answer)"})
    max_steps: int = field(default=MAX_STEPS, metadata={
        "range": (1, None), "help": "a partial solution this long counts as finished"})
    chunk: int = field(default=16, metadata={
        "range": (1, None), "help": "problems searched together (their generation batched); --resume redoes "
                                    "a killed chunk whole"})
    batch_size: int = field(default=128, metadata={"range": (1, None), "help": "sequences a generate call"})
    score_batch: int = field(default=1, metadata={
        "range": (1, None), "help": "solutions per forward pass of a scorer (1: each read alone, so that no "
                                    "score depends on what else was read with it)"})
    strength: str = field(default="default", metadata={
        "choices": list(STRENGTHS), "help": "the synthetic policy's strength"})
    split: str = field(default="test", metadata={"choices": list(tasks.SPLITS), "help": "problems' split"})
    seed: int = field(default=0, metadata={"help": "seed of the problems, pools, proposals and bootstrap"})
    out: str = field(default="out/search", metadata={
        "help": "output folder: rows.jsonl (per problem), table.md, search.png"})
    resume: bool = field(default=False, metadata={"help": "keep OUT's finished chunks and do the rest"})


@dataclass
class Readers:
    """What the scorers read with: (model, processor) pairs, None for a reward model not trained (its scorer
    reads the base instead), and how they read."""
    base: tuple = None
    prm: tuple = None
    orm: tuple = None
    agg: str = "last"
    seed: int = 0
    batch_size: int = 1  # 1: a batch moves float32 scores in their last digits


def trained(name, path):
    """--prm / --orm -> a checkpoint path, "" for none; auto: the first of TRAINED[name] holding a model."""
    if path == "none":
        return ""
    if path != "auto":
        return path
    return next((p for p in TRAINED[name] if Path(p, "config.json").exists()), "")


def load_readers(model="tiny", prm_path="", orm_path="", agg="last", seed=0, batch_size=1, device=None):
    """Readers with the base and the reward models loaded ("" for none)."""
    return Readers(load(model, device=device), prm.load(prm_path, device=device) if prm_path else None,
                   prm.load(orm_path, device=device) if orm_path else None, agg, seed, batch_size)


def inputs(items):
    """(images, questions, steps) of [(problem, steps)] items, each problem's image rendered once."""
    images = {p["id"]: tasks.image_of(p) for p, _ in items}
    return [images[p["id"]] for p, _ in items], [p["question"] for p, _ in items], [list(s) for _, s in items]


def likelihoods(readers, items, cumulative=False):
    """The base's belief in each step: exp(mean log-prob of its tokens) given the steps before it
    (prm.step_logprobs; cumulative: of every token so far). One list per item, None where it was not read."""
    model, processor = readers.base

    def read(batch):
        return prm.step_logprobs(model, batch, cumulative).exp()
    return prm.per_step(read, processor, *inputs(items), True, readers.batch_size)[0]


def aggregated(step_scores, agg):
    return SKIPPED if step_scores is None else bon.aggregate(step_scores, agg)


def prm_steps(items, readers):
    """Every step's score by the PRM (without one, the base's step likelihood): a list per item, or None."""
    if readers.prm is None:
        return likelihoods(readers, items)
    model, processor = readers.prm
    return prm.score_steps(model, processor, *inputs(items), readers.batch_size)[0]


def prm_score(items, readers):
    return [aggregated(s, readers.agg) for s in prm_steps(items, readers)]


def orm_score(items, readers):
    """The ORM read on the prefix as on a whole answer (its last step's score); without one, the base's
    likelihood of the prefix (what an untrained ORM with the likelihood head reads)."""
    if readers.orm is None:
        return [aggregated(s, "last") for s in likelihoods(readers, items, cumulative=True)]
    model, processor = readers.orm
    scores, _ = orm.score_answers(model, processor, *inputs(items), readers.batch_size)
    return [SKIPPED if s is None else s for s in scores]


def likelihood_score(items, readers):
    return [aggregated(s, readers.agg) for s in likelihoods(readers, items)]


def right_so_far(problem, steps):
    """The oracle on a partial solution: every step so far is right (with the gold steps after it, the whole
    solution is right)."""
    rest = [text for text, _, _ in tasks.gold_steps(problem)[len(steps):]]
    return tasks.first_error(problem, list(steps) + rest) == -1


def oracle_score(items, readers):
    return [float(right_so_far(p, steps)) for p, steps in items]


def random_score(items, readers):
    """A uniform draw fixed by the seed and the partial solution (scored twice, it scores the same)."""
    return [random.Random(tasks.seed_of(readers.seed, "random", p["id"], *steps)).random()
            for p, steps in items]


# Who rates a partial solution: [(problem, steps)] -> a score each (higher: keep it); oracle and random read
# no model. fork here: a scorer of your own, a function and an entry (python search.py --scorers NAME,oracle)
SCORERS = {"prm": prm_score, "orm": orm_score, "likelihood": likelihood_score, "oracle": oracle_score,
           "random": random_score}


class Cached:
    """A scorer read through a cache: a partial solution met again (another beam, another width) is not read
    again. Scores are kept to bon.TIE_DIGITS significant digits, as Best-of-N compares them."""

    def __init__(self, name, readers):
        self.name, self.readers, self.memo = name, readers, {}

    def __call__(self, items):
        keys = [(p["id"], tuple(steps)) for p, steps in items]
        todo = {key: item for key, item in zip(keys, items) if key not in self.memo}
        if todo:
            scores = SCORERS[self.name](list(todo.values()), self.readers)
            self.memo.update((key, bon.tie_rounded(v) if math.isfinite(v) else v)
                             for key, v in zip(todo, scores))
        return [self.memo[key] for key in keys]


def search(problems, policy, score, k, b, seed, count_tokens, max_steps=MAX_STEPS):
    """Step-level beam search on every problem at once, in rounds. Each round every unfinished beam of every
    problem asks for k next steps (one policy.next_steps call), every new partial solution is scored (one
    score call), and per problem the best b of the new ones and the finished beams go on (ties: the earlier
    proposal). It starts from b empty beams, so round one proposes b * k first steps.
    -> {problem id: {"beams": the final beams, best first, each {"steps", "answer", "done", "score"},
    "tokens": generated, "scored": distinct partial solutions scored}}."""
    empty = {"steps": [], "answer": None, "done": False, "score": None}
    found = {p["id"]: {"beams": [dict(empty) for _ in range(b)], "tokens": 0, "scored": set()}
             for p in problems}
    probs = {p["id"]: p for p in problems}
    for depth in range(max_steps):
        live = [(pid, i, beam) for pid, f in found.items() for i, beam in enumerate(f["beams"])
                if not beam["done"]]
        if not live:
            break
        proposals = policy.next_steps([(probs[pid], beam["steps"], k, tasks.seed_of(seed, "step", depth, i))
                                       for pid, i, beam in live])
        children = {pid: [] for pid in found}
        for (pid, _, beam), props in zip(live, proposals):
            for prop in props:
                found[pid]["tokens"] += count_tokens(prop["text"])
                stuck = len(prop["steps"]) == len(beam["steps"])  # no new step: nothing left to extend
                children[pid].append({"steps": prop["steps"], "answer": prop["answer"],
                                      "done": prop["done"] or stuck or len(prop["steps"]) >= max_steps})
        new = [(pid, child) for pid, kids in children.items() for child in kids]
        for (pid, child), value in zip(new, score([(probs[pid], child["steps"]) for pid, child in new])):
            child["score"] = value
            found[pid]["scored"].add(tuple(child["steps"]))
        for pid, f in found.items():
            # fork here: which partial solutions go on (distinct ones only; a beam that narrows with depth)
            pool = [beam for beam in f["beams"] if beam["done"]] + children[pid]
            f["beams"] = sorted(pool, key=lambda beam: -beam["score"])[:b]
    return {pid: {**f, "scored": len(f["scored"])} for pid, f in found.items()}


def token_counter(tokenizer):
    def count_tokens(text):
        return len(tokenizer.encode(text, add_special_tokens=False))
    return count_tokens


def written(solution):
    """The text a policy wrote for a whole answer (after the "Step 1: " it was given); the synthetic sampler
    keeps none: its steps as the base writes them."""
    return solution.get("text") or tasks.format_steps(solution["steps"]).removeprefix("Step 1: ")


def content(problem):
    return "|".join(map(str, tasks.content_of(problem)))


def outcome(problem, steps, answer):
    """{"answer", "correct", "first_error"} of a solution, by the gold answer and the oracle (no step: the
    first step is missing, so wrong)."""
    right = bool(steps) and answer is not None and match_answer(answer, problem["answer"])
    first_error = tasks.first_error(problem, steps) if steps else 0
    return {"answer": answer, "correct": right, "first_error": first_error}


def pool_rows(problems, policy, readers, n, seed, count_tokens):
    """Best-of-N's material, a row per problem: n whole answers from the policy, each with its tokens, its
    outcome and its scores ("prm": every step's, "orm": the answer's)."""
    solutions = policy.rollout_many([(p, [], n, tasks.seed_of(seed, "pool")) for p in problems])
    items = [(p, s["steps"]) for p, sols in zip(problems, solutions) for s in sols]
    step_scores, answer_scores = iter(prm_steps(items, readers)), iter(orm_score(items, readers))
    rows = []
    for p, sols in zip(problems, solutions):
        pool = []
        for s in sols:
            steps, answer = next(step_scores), next(answer_scores)
            scores = {"prm": steps} if steps else {}
            if math.isfinite(answer):
                scores["orm"] = answer
            pool.append({**outcome(p, s["steps"], s["answer"]), "key": bon.answer_key(s["answer"]),
                         "tokens": count_tokens(written(s)), "scores": scores})
        rows.append({"problem": p["id"], "content": content(p), "family": p["family"], "method": "pool",
                     "pool": pool})
    return rows


def search_rows(problems, policy, scorer, k, widths, seed, count_tokens, max_steps=MAX_STEPS):
    """A row per (problem, width): the best final beam's answer and outcome, the tokens and scored."""
    rows = []
    for b in widths:
        found = search(problems, policy, scorer, k, b, seed, count_tokens, max_steps)
        for p in problems:
            best, spent = found[p["id"]]["beams"][0], found[p["id"]]
            rows.append({"problem": p["id"], "content": content(p), "family": p["family"],
                         "method": f"{scorer.name} b={b}", "scorer": scorer.name, "k": k, "b": b,
                         **outcome(p, best["steps"], best["answer"]), "steps": best["steps"],
                         "tokens": spent["tokens"], "scored": spent["scored"]})
    return rows


def chunks(problems, policy, readers, scorers=tuple(SCORERS), k=4, widths=(1, 2, 4), pool=16, seed=0,
           count_tokens=None, max_steps=MAX_STEPS, chunk=16, skip=(), progress=False):
    """run() a chunk at a time: yields (chunk number, its rows); the chunks in `skip` are not run."""
    for c in tqdm(range(0, len(problems), chunk), desc="chunks", disable=not progress):
        if c // chunk in skip:
            continue
        part = problems[c:c + chunk]
        rows = pool_rows(part, policy, readers, pool, seed, count_tokens)
        for name in scorers:
            rows += search_rows(part, policy, Cached(name, readers), k, widths, seed, count_tokens, max_steps)
        yield c // chunk, rows


def run(problems, policy, readers, scorers=tuple(SCORERS), k=4, widths=(1, 2, 4), pool=16, seed=0,
        count_tokens=None, max_steps=MAX_STEPS, chunk=16, progress=False):
    """Step search with every scorer at every width, and Best-of-N's pools, on `problems` -> rows, a row per
    problem and method ("problem", "content", "family", "method": "pool" or "SCORER b=B", ...): what table()
    and summary() read. count_tokens: text -> tokens (default: the base's tokenizer)."""
    count_tokens = count_tokens or token_counter(readers.base[1].tokenizer)
    return [row for _, rows in chunks(problems, policy, readers, scorers, k, widths, pool, seed, count_tokens,
                                      max_steps, chunk, (), progress) for row in rows]


class Baselines:
    """Best-of-N's expected worth per problem (bon.at_n: exact, or a seeded Monte-Carlo estimate for votes),
    each (problem, rule, N, target) computed once."""

    def __init__(self, pools, seed=0):
        self.pools, self.seed, self.memo = pools, seed, {}

    def at_n(self, pid, rule, n, target):
        key = (pid, rule, n, target)
        if key not in self.memo:
            items = bon.prepare(self.pools[pid], rule, target)
            self.memo[key] = bon.at_n(items, bon.parse_rule(rule)[0], n, self.seed, pid)[0]
        return self.memo[key]

    def at_tokens(self, pid, rule, n_equal, target):
        """At a fractional N: the mix of the whole N below and above it whose expected N is n_equal (clipped
        to 1 .. pool), so that its expected tokens are the search's."""
        size = len(self.pools[pid])
        below = min(max(int(n_equal), 1), size)
        weight = min(max(n_equal - below, 0.0), 1.0) if below < size else 0.0
        value = self.at_n(pid, rule, below, target)
        if weight == 0:
            return value
        return (1 - weight) * value + weight * self.at_n(pid, rule, below + 1, target)


def summary(rows, bon_agg="mean", seed=0, adjusted=None):
    """The numbers of the tables and the plot: {"problems", "per_answer": mean tokens of a pool answer,
    "search": {method: {"scorer", "b", "tokens", "scored", "correct", "faithful" (intervals), "n_equal",
    "vs": {baseline: {"correct", "faithful": paired intervals at equal tokens}}}},
    "bon": {baseline: {"N": {"tokens", "scored", "correct", "faithful"}}}}. adjusted: a second level for the
    paired intervals (metrics.paired), as bench's multiplicity adjustment asks."""
    pools = {r["problem"]: r["pool"] for r in rows if r["method"] == "pool"}
    clusters = {r["problem"]: r["content"] for r in rows}
    answers = [c for pool in pools.values() for c in pool]
    per_answer = sum(c["tokens"] for c in answers) / len(answers)
    rules = {name: rule.format(agg=bon_agg) for name, rule in BASELINES.items()}
    ids, baselines = sorted(pools), Baselines(pools, seed)

    def interval(values, problems):
        return metrics.bootstrap(values, [clusters[p] for p in problems], seed=seed)
    out = {"problems": len(pools), "pool": min(map(len, pools.values())), "per_answer": per_answer, "search": {},
           "bon": {}}
    for name, rule in rules.items():
        out["bon"][name] = {}
        for n in [n for n in NS if n <= min(map(len, pools.values()))]:
            out["bon"][name][str(n)] = {"tokens": n * per_answer, "scored": 0 if name == "majority" else n}
            for target in bon.TARGETS:
                values = [baselines.at_n(p, rule, n, target) for p in ids]
                out["bon"][name][str(n)][target] = interval(values, ids)
    by_method = {}
    for r in rows:
        if r["method"] != "pool" and r["problem"] in pools:
            by_method.setdefault(r["method"], {})[r["problem"]] = r
    for method, found in by_method.items():
        done = sorted(found)
        tokens = sum(found[p]["tokens"] for p in done) / len(done)
        worth = {"correct": [float(found[p]["correct"]) for p in done],
                 "faithful": [bon.every_step_right(found[p]) for p in done]}
        res = {"scorer": found[done[0]]["scorer"], "b": found[done[0]]["b"], "tokens": tokens,
               "scored": sum(found[p]["scored"] for p in done) / len(done), "n_equal": tokens / per_answer,
               **{target: interval(values, done) for target, values in worth.items()}, "vs": {}}
        for name, rule in rules.items():
            res["vs"][name] = {}
            for target in bon.TARGETS:
                equal = [baselines.at_tokens(p, rule, res["n_equal"], target) for p in done]
                res["vs"][name][target] = metrics.paired(worth[target], equal, [clusters[p] for p in done],
                                                         seed=seed, adjusted=adjusted)
        out["search"][method] = res
    return out


def compare(rows, a, b, target="correct", seed=0, adjusted=None):
    """Search method a minus search method b ("prm b=2" vs "orm b=2": which scorer guides better), paired over
    the problems both searched, with its 95% interval over contents (metrics.verdict reads it)."""
    found = {}
    for r in rows:
        if r["method"] in (a, b):
            found.setdefault(r["method"], {})[r["problem"]] = r
    both = sorted(set(found.get(a, {})) & set(found.get(b, {})))
    worth = bon.TARGETS[target]
    return metrics.paired([worth(found[a][p]) for p in both], [worth(found[b][p]) for p in both],
                          [found[a][p]["content"] for p in both], seed=seed, adjusted=adjusted)


def interval_text(ci, signed=False):
    fmt = "+.3f" if signed else ".3f"
    if ci.get("mean") is None:
        return "-"
    if ci.get("lo") is None:
        return f"{ci['mean']:{fmt}} (too few)"
    return f"{ci['mean']:{fmt}} [{ci['lo']:{fmt}}, {ci['hi']:{fmt}}]"


def table(rows, bon_agg="mean", seed=0, res=None):
    """The tables as markdown: every method's tokens, scored and accuracies; then each search minus each
    baseline at equal generated tokens, for final-answer accuracy and for faithful accuracy."""
    res = res or summary(rows, bon_agg, seed)
    pool_size = res["pool"]
    lines = [f"{res['problems']} problems; a whole answer is {res['per_answer']:.1f} generated tokens on "
             "average. Per problem: tokens generated, solutions scored; [95% bootstrap interval, contents]",
             "", "| method | tokens | scored | accuracy | faithful |", "|---|---:|---:|---:|---:|"]
    for method, r in res["search"].items():
        lines.append(f"| search: {method} | {r['tokens']:.0f} | {r['scored']:.1f} | "
                     f"{interval_text(r['correct'])} | {interval_text(r['faithful'])} |")
    for name, points in res["bon"].items():
        for n, r in points.items():
            lines.append(f"| {name} N={n} | {r['tokens']:.0f} | {r['scored']} | "
                         f"{interval_text(r['correct'])} | {interval_text(r['faithful'])} |")
    for target, title in (("correct", "final-answer accuracy"), ("faithful", "faithful accuracy")):
        lines += ["", f"At equal generated tokens, {title}: search minus each baseline, paired (N = search "
                  f"tokens / tokens of an answer, a mix of the whole N around it; *: past the pool of "
                  f"{pool_size}, the baseline spends fewer tokens)", "",
                  "| search | tokens | N | " + " | ".join(BASELINES) + " |",
                  "|---|---:|---:|" + "---:|" * len(BASELINES)]
        for method, r in res["search"].items():
            star = "*" if r["n_equal"] > pool_size else ""
            lines.append(f"| {method} | {r['tokens']:.0f} | {r['n_equal']:.1f}{star} | " + " | ".join(
                interval_text(r["vs"][name][target], signed=True) for name in BASELINES) + " |")
    return "\n".join(lines)


def plot(res, path, title=""):
    """Accuracy against generated tokens per problem: a line per search scorer (a point per beam width) and
    per Best-of-N method (a point per N)."""
    from matplotlib.figure import Figure  # here, as in lab/report.py: importing search.py needs no matplotlib

    fig = Figure(figsize=(9.5, 5))
    ax = fig.add_subplot()
    scorers = {}
    for r in res["search"].values():
        scorers.setdefault(r["scorer"], []).append((r["tokens"], r["correct"]["mean"], r["b"]))
    for i, (name, points) in enumerate(scorers.items()):
        points.sort()
        ax.plot([x for x, _, _ in points], [y for _, y, _ in points], marker="o", markersize=9, color=f"C{i}",
                zorder=3, label=f"search, {name} (b={', '.join(str(b) for _, _, b in points)})")  # over the curves
    for j, (name, curve) in enumerate(res["bon"].items()):
        ax.plot([r["tokens"] for r in curve.values()], [r["correct"]["mean"] for r in curve.values()],
                marker="s", linestyle="--", color=f"C{len(scorers) + j}",
                label=f"{name} (N={', '.join(curve)})")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter("{x:.0f}")  # 64, not 2^6
    ax.set_xlabel("generated tokens per problem (log scale)")
    ax.set_ylabel("final-answer accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method", title_fontsize=8)
    fig.suptitle(title or "step search vs Best-of-N at equal generated tokens", x=0.01, ha="left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def make_policy(a):
    """--policy: the synthetic sampler, or a checkpoint the loader reads (a server: python -m lab.api)."""
    if a.policy.startswith(("http://", "https://")):
        raise ValueError(f"--policy {a.policy}: a served policy runs as python -m lab.api search --policy")
    if a.policy == "synthetic":
        return SyntheticPolicy(a.strength)
    return VLMPolicy(a.policy, a.temperature, a.max_new_tokens, a.batch_size)


def resumed(path, resume):
    """The chunks a killed run finished (OUT.done lists each after its rows are on disk): their rows kept, the
    rest of the file (a chunk cut off mid-way, a line cut off mid-write) dropped, to be redone.
    -> (finished chunk numbers, their rows)."""
    if not resume or not path.exists():
        return set(), []
    done, rows = data.finished(path), []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only a chunk not marked done can hold a line cut off mid-write
    counts = {}
    for r in rows:
        counts[str(r["chunk"])] = counts.get(str(r["chunk"]), 0) + 1
    finished = sorted((c for c, n in done.items() if counts.get(c) == n), key=int)
    rows = [r for r in rows if str(r["chunk"]) in finished]
    data.write_jsonl(path, rows)
    Path(str(path) + ".done").write_text("".join(f"{c} {done[c]}\n" for c in finished))
    return {int(c) for c in finished}, rows


def main(a: Args, policy=None):
    t0 = time.time()
    if not torch.cuda.is_available():  # the tiny models' ops are too small to share between CPU threads, and
        torch.set_num_threads(1)       # threads spin-waiting beside another job run ~20x slower (conftest.py)
    scorers = [cli.choice(s.strip(), SCORERS, "--scorers") for s in a.scorers.split(",") if s.strip()]
    try:
        widths = sorted({int(b) for b in a.b.split(",")})
    except ValueError:
        raise ValueError(f"--b {a.b!r}: expected beam widths, e.g. 1,2,4") from None
    if not scorers or min(widths) < 1:
        raise ValueError(f"--scorers {a.scorers!r} --b {a.b!r}: expected a scorer and widths of at least 1")
    models = {"prm": trained("prm", a.prm), "orm": trained("orm", a.orm)}
    for path in models.values():
        if path:
            resolve(path)  # a missing checkpoint fails now, before any work
    out = Path(a.out)
    rows_path = out / "rows.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    # what makes the rows: --resume continues a run made with the same (the checkpoints read included)
    data.check_resume(rows_path, {**{k: v for k, v in asdict(a).items() if k not in ("out", "resume")},
                                  **models}, a.resume)
    skip, rows = resumed(rows_path, a.resume)
    print(f"[search] prm: {models['prm'] or 'none (the base step likelihood, as the likelihood scorer)'}; "
          f"orm: {models['orm'] or 'none (the base likelihood of the prefix)'}")
    readers = load_readers(a.model, models["prm"], models["orm"], a.agg, a.seed, a.score_batch)
    policy = policy or make_policy(a)
    # tokens as the policy's own tokenizer counts them (the synthetic and served ones: the base's)
    processor = policy.processor if isinstance(policy, VLMPolicy) else readers.base[1]
    count_tokens = token_counter(processor.tokenizer)
    problems = tasks.make_problems(a.n_problems, a.seed, a.split)
    for c, new in chunks(problems, policy, readers, scorers, a.k, widths, a.pool, a.seed, count_tokens,
                         a.max_steps, a.chunk, skip, progress=True):
        for r in new:
            data.append_jsonl(rows_path, {"chunk": c, **r})
        with open(str(rows_path) + ".done", "a") as f:  # the chunk is finished once its rows are on disk
            f.write(f"{c} {len(new)}\n")
        rows += new
    res = summary(rows, a.bon_agg, a.seed)
    text = table(rows, a.bon_agg, a.seed, res)
    (out / "table.md").write_text(text + "\n")
    title = (f"step search (k={a.k}, b={a.b}) vs Best-of-N, {a.policy} policy, {res['problems']} {a.split} "
             f"problems, seed {a.seed}")
    picture = plot(res, out / "search.png", title)
    print(text)
    print(f"{res['problems']} problems, k={a.k}, b={a.b}, pool {a.pool}: {time.time() - t0:.0f}s -> "
          f"{rows_path}, {picture}")
    return res


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
