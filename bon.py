"""Best-of-N: aggregation, selection rules, exact accuracy@N, first-error F1, the ViLBench filter.

    python bon.py --problems P --candidates C --scores prm.jsonl orm.jsonl   # accuracy@N and first-error F1 tables
    python bon.py --mathv                                  # random, majority, oracle on the real MATH-V pool (15)
    python bon.py --mathv --model out/prm --limit 20       # ... plus PRM and ORM selection with a checkpoint

A pool: per problem, candidates {"answer", "correct", "scores": {key: float | [float per step]}}, optional "key"
(the normalized answer). Rules: random (one uniform pick: the mean correctness), majority (most frequent normalized
answer; no answer, no vote), oracle (pass@N), max:KEY[:AGG] (highest score, step scores aggregated by aggregate),
vote:KEY[:AGG] (weighted majority: the answer whose scores sum highest). A tie counts as its exact expectation: a
uniform pick among the tied candidates or answer groups (a group is worth its members' mean correctness).
accuracy@N is the exact expectation over all C(pool, N) subsets (at_n): argmax in closed form by rank; votes by
enumeration, or where that is costly (N=8 of 16) over MC_DRAWS (1000) seeded random subsets, their error kept.
"""
import itertools
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orm
import prm
from common import cli, data, metrics
from common.answers import match_answer, normalize
from common.mathv import MATHV, load_mathv
from common.model import MAX_LEN
from common.tasks import seed_of

NS = (1, 2, 4, 8, 16)
def mean(step_scores):
    return sum(step_scores) / len(step_scores)


def last(step_scores):
    return step_scores[-1]


def last_k(step_scores, k):
    """The mean of the last k steps: the paper's hybrid, which scores only the closing steps."""
    tail = step_scores[-k:]
    return sum(tail) / len(tail)


def last2(step_scores):
    return last_k(step_scores, 2)


# How step scores become one answer score. bench.py chooses among these on the tune split and reports each.
# fork here: an aggregation of your own, one function and one entry (python bench.py --tune-only shows it on tune)
AGGREGATIONS = {"min": min, "mean": mean, "prod": math.prod, "last": last, "last2": last2}
AGGS = tuple(AGGREGATIONS)
# bench.py's method names (results.json) as rules over the score keys "prm", "orm", "judge_prm", "judge_orm".
# weighted_prm sums min-aggregated scores (Math-Shepherd's vote); the judge PRM is averaged, like ViLPRM's score.
METHODS = {"random": "random", "majority": "majority", "weighted_prm": "vote:prm:min", "orm": "max:orm",
           **{f"prm_{a}": f"max:prm:{a}" for a in AGGS}, "judge_orm": "max:judge_orm",
           "judge_prm": "max:judge_prm:mean", "oracle": "oracle"}


def aggregate(step_scores, how="min"):
    """One answer score from its step scores: an AGGREGATIONS member, or lastK for any K (the mean of the last K
    steps). An answer with no steps scores 0."""
    s = list(step_scores)
    if not s:
        return 0.0
    if how in AGGREGATIONS:
        return AGGREGATIONS[how](s)
    if how.startswith("last") and how[4:].isdigit():
        return last_k(s, int(how[4:]))
    raise ValueError(f"unknown aggregation {how!r}: {', '.join(AGGREGATIONS)}, or lastK")


def answer_key(answer, options=None):
    """A hashable canonical answer: equal keys when answers.match_answer agrees (numbers to 6 significant digits,
    option text -> its letter). None for no answer."""
    if answer is None or str(answer).strip() == "":
        return None
    k = normalize(answer, options)
    return float(f"{k:.6g}") if isinstance(k, float) else k


def parse_rule(rule):
    """'max:prm:min' -> ('max', 'prm', 'min'); 'majority' -> ('majority', None, None)."""
    kind, *rest = rule.split(":")
    if kind in ("random", "majority", "oracle") and not rest:
        return kind, None, None
    if kind in ("max", "vote") and len(rest) in (1, 2) and rest[0]:
        return kind, rest[0], rest[1] if len(rest) == 2 else None
    raise ValueError(f"bad rule {rule!r}: random | majority | oracle | max:KEY[:AGG] | vote:KEY[:AGG]")


# Scores are compared to 6 significant digits: closer ones are a tie (an exact expected pick among them), so that
# noise in the last digits of a float32 never decides which answer is picked, while a score of 1e-7 still ranks
# below one of 1e-6 (a min or a product of step scores gets that small).
TIE_DIGITS = 6


def tie_rounded(score):
    """A score as selection compares it: to TIE_DIGITS significant digits."""
    return float(f"{score:.{TIE_DIGITS}g}")


def right_answer(candidate):
    return float(bool(candidate.get("correct")))


def every_step_right(candidate):
    """The oracle finds no wrong step (a candidate without oracle labels counts as not faithful)."""
    return float(candidate.get("first_error") == -1)


# What a pick is worth: its final answer right (accuracy@N, the paper's measure), or every step right by the
# oracle (faithful@N: a right answer reached by wrong steps, a lucky one, scores 0).
TARGETS = {"correct": right_answer, "faithful": every_step_right}


def prepare(pool, rule, target="correct"):
    """The pool as (answer key, the pick's worth 0/1 under `target`, the rule's score as tie_rounded, or None)
    triples: what every selection reads."""
    kind, key, agg = parse_rule(rule)
    worth = TARGETS[target]
    out = []
    for c in pool:
        v = c.get("scores", {}).get(key) if key else None
        if isinstance(v, (list, tuple)):
            if agg is None:
                raise ValueError(f"rule {rule!r}: {key} holds step scores, name an aggregation ({rule}:min)")
            v = aggregate(v, agg) if v else None
        out.append((c["key"] if "key" in c else answer_key(c.get("answer")), worth(c),
                    None if v is None else tie_rounded(float(v))))
    return out


def expected(items, kind):
    """Exact expected correctness of a rule's pick from prepared triples (ties: see the module docstring).
    A candidate without a score is never picked by max (unless none has one: then a random pick) and weighs 0."""
    if not items:
        return 0.0
    mean = sum(c for _, c, _ in items) / len(items)
    if kind == "random":
        return mean
    if kind == "oracle":
        return float(any(c for _, c, _ in items))
    if kind == "max":
        scored = [(v, c) for _, c, v in items if v is not None]
        if not scored:
            return mean
        best = max(v for v, _ in scored)
        tied = [c for v, c in scored if v == best]
        return sum(tied) / len(tied)
    votes, right = {}, {}  # answer key -> summed weight, -> correctness of its members
    for k, c, v in items:
        if k is not None:
            votes[k] = votes.get(k, 0.0) + (1.0 if kind == "majority" else v or 0.0)
            right.setdefault(k, []).append(c)
    if not votes:
        return mean
    best = max(votes.values())
    tied = [sum(right[k]) / len(right[k]) for k, w in votes.items() if math.isclose(w, best, rel_tol=1e-9)]
    return sum(tied) / len(tied)


EXACT_LIMIT, MC_DRAWS = 5000, 1000  # votes: every subset up to this many, else this many random ones


def at_n(items, kind, n, seed=0, name=""):
    """(expected correctness of the rule's pick from a uniformly random n-subset of the pool, Monte-Carlo variance
    of that value: 0 when exact). Argmax, random and oracle are exact in closed form; a vote is exact by enumerating
    the C(m, n) subsets when there are at most EXACT_LIMIT, else the mean over MC_DRAWS seeded random subsets."""
    m = len(items)
    n = min(n, m)
    if m == 0:
        return 0.0, 0.0
    total, right = math.comb(m, n), sum(c for _, c, _ in items)
    if kind == "random":
        return right / m, 0.0
    if kind == "oracle":  # at least one right answer in the subset
        return 1 - math.comb(m - int(right), n) / total, 0.0
    if kind == "max":  # by rank: the top score level of the subset is L with P = (C(b+g, n) - C(b, n)) / C(m, n)
        levels = {}  # b below L, g members at L; a uniform pick among the tied members of L (no score: lowest)
        for _, c, v in items:
            levels.setdefault(-math.inf if v is None else v, []).append(c)
        e, below = 0.0, 0
        for v in sorted(levels):
            g = len(levels[v])
            e += (math.comb(below + g, n) - math.comb(below, n)) / total * sum(levels[v]) / g
            below += g
        return e, 0.0
    if total <= EXACT_LIMIT:
        vals = [expected([items[i] for i in s], kind) for s in itertools.combinations(range(m), n)]
        return sum(vals) / total, 0.0
    rng = random.Random(seed_of(seed, name, n))
    vals = [expected([items[i] for i in rng.sample(range(m), n)], kind) for _ in range(MC_DRAWS)]
    mean = sum(vals) / len(vals)
    return mean, sum((x - mean) ** 2 for x in vals) / (len(vals) - 1) / len(vals)


def problem_rows(pools, methods, ns=NS, seed=0, meta=None, target="correct"):
    """Per-problem results: one row per (problem, method): {"problem", "method", "acc": {"N": value},
    "mc_var": {"N": Monte-Carlo variance}} plus `meta` (a dict per problem id: family, content, pool...). target:
    what a pick is worth (TARGETS)."""
    rows = []
    for name, rule in methods.items():
        kind = parse_rule(rule)[0]
        for pid, pool in pools.items():
            items = prepare(pool, rule, target)
            res = {str(n): at_n(items, kind, n, seed, pid) for n in ns if n <= len(items) or n == max(ns)}
            rows.append({"problem": pid, "method": name, **(meta or {}).get(pid, {}),
                         "acc": {k: v[0] for k, v in res.items()}, "mc_var": {k: v[1] for k, v in res.items() if v[1]}})
    return rows


def select(pool, rule):
    """Expected correctness of `rule`'s pick from a whole pool (a list of candidate dicts)."""
    return expected(prepare(pool, rule), parse_rule(rule)[0])


def accuracy_at_n(pools, methods, ns=NS, seed=0):
    """{method: {"N": {"mean", "lo", "hi", "n"}}}: exact expected accuracy@N (at_n) averaged over the problems of
    pools {problem id: [candidate, ...]}, with a 95% bootstrap interval over problems. An N above the largest pool
    becomes the pool size."""
    top = max(len(p) for p in pools.values())
    ns = sorted({min(int(n), top) for n in ns})
    rows = problem_rows(pools, methods, ns, seed)
    return {m: {str(n): metrics.bootstrap([r["acc"][str(n)] for r in rows if r["method"] == m], seed=seed)
                for n in ns} for m in methods}


def means(results):
    """{method: {"N": {"mean", ...}}} -> {method: {"N": mean}} (the shape of results.json's "bon")."""
    return {m: {n: v["mean"] for n, v in r.items()} for m, r in results.items()}


def vilbench_filter(pools, pairs, n=16, seed=0):
    """ViLBench's selection: per problem, the PRM-preference indicator = the mean over reward models (pairs of
    (PRM rule, ORM rule)) of Best-of-n accuracy with the PRM rule minus with the ORM rule. Keeps problems where it
    is > 0. Returns (kept problem ids in pool order, {problem id: indicator})."""
    gain = {pid: 0.0 for pid in pools}
    for prm_rule, orm_rule in pairs:
        for pid, pool in pools.items():
            a = at_n(prepare(pool, prm_rule), "max", n, seed, pid)[0]
            gain[pid] += (a - at_n(prepare(pool, orm_rule), "max", n, seed, pid)[0]) / len(pairs)
    return prefers_prm(gain), gain


def prefers_prm(gain):
    """The problems the filter keeps: those whose PRM-preference indicator is above 0 (beyond rounding)."""
    return [pid for pid, g in gain.items() if g > 1e-12]


def table(results, methods=None, ns=None):
    """A markdown table, rows methods, columns N; cells are accuracies, or "mean [lo, hi]" from accuracy_at_n."""
    methods = [m for m in (methods or list(results)) if m in results]
    ns = [str(n) for n in (ns or next(iter(results.values()), {}))]

    def cell(v):
        if not isinstance(v, dict):
            return "-" if v is None else f"{v:.3f}"
        if v.get("mean") is None:
            return "-"
        if v.get("lo") is None:  # fewer problems than an interval needs (metrics.MIN_CLUSTERS)
            return f"{v['mean']:.3f} (too few)"
        return f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"
    lines = ["| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---:|" * len(ns)]
    lines += [f"| {m} | " + " | ".join(cell(results[m].get(n)) for n in ns) + " |" for m in methods]
    return "\n".join(lines)


def make_pools(problems, candidates, score_sets=None):
    """{problem id: [pool candidate]} from problem and candidate records and score_sets {key: {candidate id: score}}.
    A candidate with correct = null is matched against the gold answer."""
    probs, pools = {p["id"]: p for p in problems}, {p["id"]: [] for p in problems}
    for c in candidates:
        p = probs.get(c["problem_id"])
        if p is None:  # bench passes a subset of the problems (main refuses such a candidate)
            continue
        correct = c["correct"] if c.get("correct") is not None else match_answer(c["answer"], p["answer"],
                                                                                  p.get("options"))
        scores = {k: s[c["id"]] for k, s in (score_sets or {}).items() if c["id"] in s}
        pools[p["id"]].append({"id": c["id"], "answer": c["answer"], "key": answer_key(c["answer"], p.get("options")),
                               "correct": correct, "first_error": c.get("first_error"), "n_steps": len(c["steps"]),
                               "scores": scores})
    return {pid: pool for pid, pool in pools.items() if pool}


def rules_for(score_sets):
    """Methods {name: rule} for the score keys at hand: KEY for a float (ORM) score; KEY_AGG per aggregation and
    weighted_KEY for step (PRM) scores; "prm"/"orm" keys give bench.py's names. Plus random, majority, oracle."""
    rules = {"random": "random", "majority": "majority"}
    for k, s in score_sets.items():
        if any(isinstance(v, list) for v in s.values()):
            rules[f"weighted_{k}"] = f"vote:{k}:min"
            rules.update({f"{k}_{a}": f"max:{k}:{a}" for a in AGGS})
        else:
            rules[k] = f"max:{k}"
    return {**rules, "oracle": "oracle"}


def load_scores(paths, candidates, skip_missing=False):
    """Score files joined strictly to the candidates (data.read_scores) -> ({key: {candidate id: float | [floats]}},
    {key: candidates without a score}); key = the records' "method" field or the file stem (the stem when the
    method is taken, e.g. a judge PRM and a judge ORM both called "judge-logits")."""
    sets, skipped = {}, {}
    for path in paths:
        scores, missing, method = data.read_scores(path, candidates, skip_missing)
        key = (method or Path(path).stem).replace("-", "_")
        key = Path(path).stem.replace("-", "_") if key in sets else key
        if key in sets:
            raise ValueError(f"{path}: score key {key!r} used twice; rename the file")
        sets[key], skipped[key] = scores, missing
        if missing:
            print(f"{path}: {missing} of {len(candidates)} candidates have no score (skipped: never picked by max, "
                  "weight 0 in a vote)", file=sys.stderr)
    return sets, {k: v for k, v in skipped.items() if v}


def check_same_steps(key, candidate_id, step_scores, n_steps):
    """A first error indexes the candidate's own steps: step scores of the same answer cut another way (a
    segmentation variant) cannot be judged against it, so they are refused rather than measured wrong."""
    if n_steps is not None and len(step_scores) != n_steps:
        raise ValueError(f"{key}: candidate {candidate_id} has {len(step_scores)} step scores for {n_steps} steps; "
                         "its first error indexes its own steps (a re-cut answer needs its own first-error truth)")


def step_f1(pools, key, dev_frac=0.5, seed=0):
    """First-error F1 of one step-score key over the candidates that carry first_error: the threshold is chosen on
    a dev share of the problems (a stable hash of the id), the F1 measured on the rest (and at 0.5 for reference)."""
    dev, test = ([], []), ([], [])
    for pid, pool in pools.items():
        part = dev if seed_of(seed, "dev", pid) % 1000 < 1000 * dev_frac else test
        for c in pool:
            if c.get("first_error") is not None and c["scores"].get(key):
                check_same_steps(key, c["id"], c["scores"][key], c.get("n_steps"))
                part[0].append(c["scores"][key])
                part[1].append(c["first_error"])
    return metrics.dev_test_f1(*dev, *test)


def report(pools, rules, ns, a, families=None):
    """Print accuracy@N (all, per family), first-error F1 per step-score key and the ViLBench filter (for each
    PRM key with its ORM twin, "prm" -> "orm"); return the numbers."""
    parts = {"all": pools, **{f: {p: v for p, v in pools.items() if families.get(p) == f}
                              for f in sorted(set((families or {}).values()))}}
    res = {"bon": {}}
    for part, pp in parts.items():
        res["bon"][part] = accuracy_at_n(pp, rules, ns, a.seed)
        print(f"\naccuracy@N, {part} ({len(pp)} problems; [95% bootstrap interval])\n{table(res['bon'][part])}")
    scores = [c["scores"] for pool in pools.values() for c in pool]
    keys = sorted({k for s in scores for k, v in s.items() if isinstance(v, list)})
    if keys and any(c.get("first_error") is not None for pool in pools.values() for c in pool):
        res["step"] = {k: step_f1(pools, k, a.dev_frac, a.seed) for k in keys}
        print("\nfirst-error F1 (ProcessBench), threshold chosen on the dev problems, F1 on the others")
        print("| scores | threshold | F1 | acc wrong | acc right |\n|---|---:|---:|---:|---:|")
        for k, r in res["step"].items():
            print(f"| {k} | {r['threshold']:.2f} | " + " | ".join(
                "-" if r[x] is None else f"{r[x]:.3f}" for x in ("first_error_f1", "acc_error", "acc_correct")) + " |")
    pairs = [(f"max:{k}:mean", f"max:{k.replace('prm', 'orm')}") for k in keys
             if "prm" in k and any(k.replace("prm", "orm") in s for s in scores)]
    if pairs:
        n = max(int(x) for x in res["bon"]["all"]["random"])
        kept, _ = vilbench_filter(pools, pairs, n, a.seed)
        res["filter"] = {"n": n, "kept": len(kept), "of": len(pools), "pairs": pairs}
        print(f"\nViLBench filter (PRM mean minus ORM at N={n}, {len(pairs)} reward model(s)): kept {len(kept)} "
              f"of {len(pools)} problems. Selected and measured on the same candidates, so the table below is "
              "optimistic; bench.py selects on half of each pool and measures on the other half")
        if kept:
            res["filter"]["bon"] = accuracy_at_n({p: pools[p] for p in kept}, rules, ns, a.seed)
            print(table(res["filter"]["bon"]))
    return res


@dataclass
class Args:
    problems: str = field(default="", metadata={"help": "problems JSONL (with --candidates and --scores)"})
    candidates: str = field(default="", metadata={"help": "candidates JSONL: the pool of each problem"})
    scores: list = field(default=None, metadata={"help": "score JSONL files (PRM step scores or ORM scores)"})
    skip_missing: bool = field(default=False, metadata={"help": "candidates without a score: counted and left "
                                                                 "unscored (default: an error)"})
    mathv: str = field(default="", metadata={"help": "MATH-V folder (bare --mathv: datasets/mathv-testmini)"})
    model: str = field(default="", metadata={"help": "with --mathv: a PRM checkpoint (or tiny-init) scores the pool"})
    orm_model: str = field(default="", metadata={"help": "with --model: an ORM checkpoint (default: --model's last)"})
    limit: int = field(default=0, metadata={"range": (0, None),
                                            "help": "with --mathv: only the first K problems (0: all)"})
    ns: str = field(default="1,2,4,8,16", metadata={"type": cli.listed(int, 1),
                                                    "help": "the N of accuracy@N (above the "
                                                    "pool size: the pool)"})
    seed: int = field(default=0, metadata={"help": "seed of the subsets and of the dev split"})
    dev_frac: float = field(default=0.5, metadata={"range": (0.0, 1.0),
                                                   "help": "share of problems that choose the "
                                                   "first-error threshold"})
    batch_size: int = field(default=8, metadata={"range": (1, None),
                                                 "help": "with --model: answers per forward pass"})
    max_len: int = field(default=MAX_LEN, metadata={"range": (16, None),
                                                    "help": "with --model: maximum tokens per answer"})
    device: str = field(default="", metadata={"type": cli.device,
                                              "help": "with --model: cpu | cuda "
                                              "(default: cuda if available)"})


def score_pool(a, problems, candidates):
    """Score the pool's steps with --model (prm.score_steps) and answers with --orm-model (orm.score_answers), or
    with --model's last-step score (what orm.score_answers returns for the same model, without a second pass)."""
    images = {p["id"]: data.open_image(p["image"], f"problem {p['id']}") for p in problems}
    qs = {p["id"]: p["question"] for p in problems}
    args = ([images[c["problem_id"]] for c in candidates], [qs[c["problem_id"]] for c in candidates],
            [c["steps"] for c in candidates], a.batch_size, a.max_len, True)
    model, processor = prm.load(a.model, device=a.device or None)
    steps, skipped = prm.score_steps(model, processor, *args)
    if a.orm_model:
        model, processor = prm.load(a.orm_model, device=a.device or None)
        answers, skipped_orm = orm.score_answers(model, processor, *args)
        print(f"ORM {a.orm_model}: {len(skipped_orm)} of {len(candidates)} answers skipped", file=sys.stderr)
    else:
        answers = orm.from_steps(steps)
    print(f"PRM {a.model}: {len(skipped)} of {len(candidates)} answers skipped (too long or no step)", file=sys.stderr)
    ids = [c["id"] for c in candidates]
    return {"prm": {i: s for i, s in zip(ids, steps) if s},
            "orm": {i: s for i, s in zip(ids, answers) if s is not None}}


def main(a: Args):
    ns = [int(n) for n in a.ns.split(",")]
    if a.mathv:
        problems, candidates = load_mathv(a.mathv)
        problems = problems[:a.limit] if a.limit else problems
        keep = {p["id"] for p in problems}
        candidates = [c for c in candidates if c["problem_id"] in keep]
        score_sets = score_pool(a, problems, candidates) if a.model else {}
        families = None
        gold = {p["id"]: (p["answer"], p["options"]) for p in problems}  # our matching vs MATH-V's own labels
        ours = [(match_answer(c["answer"], *gold[c["problem_id"]]), bool(c["correct"])) for c in candidates]
        labels = {"label_agreement": sum(o == m for o, m in ours) / len(ours),
                  "accepted_labelled_wrong": sum(o and not m for o, m in ours),
                  "rejected_labelled_right": sum(m and not o for o, m in ours)}
        print(f"answers.match_answer agrees with MATH-V's labels on {labels['label_agreement']:.2%} of {len(ours)} "
              f"answers: accepts {labels['accepted_labelled_wrong']} it labels wrong, rejects "
              f"{labels['rejected_labelled_right']} it labels right")
    elif a.problems and a.candidates and a.scores:
        problems = data.read_jsonl(a.problems, "problem", nonempty=True)
        candidates = data.read_jsonl(a.candidates, "candidate", nonempty=True)
        known = {p["id"] for p in problems}
        for c in candidates:
            if c["problem_id"] not in known:
                raise ValueError(f"{a.candidates}: candidate {c['id']}: problem {c['problem_id']} is not in {a.problems}")
        score_sets, skipped = load_scores(a.scores, candidates, a.skip_missing)
        families, labels = {p["id"]: p["family"] for p in problems if p.get("family")}, {"skipped_scores": skipped}
    else:
        raise ValueError("give --problems, --candidates and --scores, or --mathv [DIR]")
    pools = make_pools(problems, candidates, score_sets)
    if not pools:
        raise ValueError("no problem has a candidate")
    sizes = sorted({len(p) for p in pools.values()})
    print(f"{len(pools)} problems, pool sizes {sizes}, {sum(map(len, pools.values()))} candidates, "
          f"score keys {sorted(score_sets) or 'none'}")
    res = report(pools, rules_for(score_sets), ns, a, families)
    res.update(problems=len(pools), pool=sizes[-1], **labels)
    print(json.dumps({**{k: v for k, v in res.items() if k != "bon"},
                      "bon": {part: means(r) for part, r in res["bon"].items()}}, default=str))
    return res


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--mathv" in argv and (argv[-1] == "--mathv" or argv[argv.index("--mathv") + 1].startswith("--")):
        argv.insert(argv.index("--mathv") + 1, str(MATHV))  # a bare --mathv means the shipped pool
    cli.run(main, Args, __doc__, argv)
