"""Step labels without a human: Monte-Carlo rollouts (Math-Shepherd) and MCTS with binary search for the first
error (OmegaPRM, the paper's "enhanced tree search" that built ViLReward-73K).

    python tree_search.py --policy synthetic --method mcts --n-problems 20 --rollouts 8 --out out/ts/labels.jsonl
    python tree_search.py --policy tiny --method mc --n-problems 8 --rollouts 4 --out out/ts/tiny.jsonl [--resume]
    python tree_search.py --eval [--n-problems 500] [--seed 0]     # tau chosen on tune, both methods on test vs the oracle
    python -m lab.api label --policy http://localhost:8000/v1 ...   # the same search with a served policy

A policy (policy.py) continues a partial solution: rollout(problem, prefix_steps, n, seed) -> [{"steps", ...}]. The value
of a prefix is the share of k rollouts from it that reach the gold answer (a Monte-Carlo estimate of "can this
partial solution still succeed"). A prefix counts as right when its value > tau (Math-Shepherd's hard label: tau 0).
- mc (Wang et al. 2024, Math-Shepherd): k rollouts from every step prefix of every sampled solution.
- mcts (Luo et al. 2024, OmegaPRM): the sampled solutions are the root's rollouts; a right one is right at every
  step (it reached the answer); a wrong one gets a binary search for its first error, ~log2(n) estimates instead of
  n - 1; estimates are cached per prefix, so solutions sharing steps share them; a value-plus-exploration score
  picks which wrong solution to search next in a rollout budget (select_score; the default budget searches all,
  so the order changes nothing: omegaprm.py has the full algorithm and the comparison at equal budgets).
Output: one step-labelled record (common/data.py "labelled") per sampled solution, soft values as labels, appended
as it is made; OUT.done lists the finished problems, so --resume after a kill loses and duplicates nothing.
"""
import json
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from common import cli, data, tasks
from common.answers import match_answer
from policy import STRENGTHS, SyntheticPolicy, VLMPolicy

# A prefix is right when its value > TAU. Math-Shepherd and OmegaPRM use 0, but a policy that sometimes reaches the
# gold answer by luck after a wrong step (the synthetic one does ~5% of rollouts from a wrong prefix; real models
# guess multiple choice) gives a wrong prefix value > 0 with P = 1 - 0.95^K (0.56 at K = 16), and a larger K, which
# cures chance zeros of right prefixes, makes it worse. A floor above the luck rate fixes both (see --eval).
TAU = 0.2
# OmegaPRM's selection constants (their Sec. 3): alpha 0.5, beta 0.9, c_puct 0.125; their L is 500 tokens, ours steps.
ALPHA, BETA, L_STEPS, C_PUCT = 0.5, 0.9, 8, 0.125


@dataclass
class Args:
    policy: str = field(default="synthetic", metadata={"help": "synthetic | tiny | a checkpoint (a server: python -m lab.api label)"})
    method: str = field(default="mcts", metadata={"help": "mcts (OmegaPRM) | mc (Math-Shepherd)", "choices": ["mcts", "mc"]})
    n_problems: int = field(default=0, metadata={"range": (0, None), "help": "problems to label (0: 20; with --eval 500)"})
    rollouts: int = field(default=16, metadata={"range": (1, None), "help": "K: rollouts per value estimate"})
    budget: int = field(default=0, metadata={"range": (0, None), "help": "mcts: rollouts per question (0: 2 * samples * K)"})
    samples: int = field(default=4, metadata={"range": (1, None), "help": "sampled solutions per problem (one record each)"})
    tau: float = field(default=TAU, metadata={"range": (0.0, 1.0), "help": "a prefix is right when its value > tau (0: Math-Shepherd)"})
    out: str = field(default="out/tree_search/labels.jsonl", metadata={"help": "output JSONL (images next to it)"})
    seed: int = field(default=0, metadata={"help": "seed of the problems, the samples and every rollout"})
    split: str = field(default="train", metadata={"help": "split of the synthetic problems"})
    strength: str = field(default="default", metadata={"help": "synthetic policy", "choices": list(STRENGTHS)})
    temperature: float = field(default=1.0, metadata={"range": (0.0, None), "help": "VLM policy sampling temperature"})
    max_new_tokens: int = field(default=96, metadata={"range": (1, None), "help": "VLM policy tokens per continuation"})
    batch_size: int = field(default=16, metadata={"range": (1, None), "help": "VLM: continuations a generate call; served: problems at once"})
    hard_labels: bool = field(default=False, metadata={"help": "write 1/0 labels (hard_labels) instead of the soft "
                              "values"})
    resume: bool = field(default=False, metadata={"help": "keep OUT's finished problems and do the rest"})
    eval: bool = field(default=False, metadata={"help": "both methods on test problems (synthetic policy) vs the oracle, "
                       "tau chosen on tune problems from --taus"})
    taus: str = field(default="0,0.1,0.2,0.3", metadata={"type": cli.listed(float, 0.0, 1.0),
                                                         "help": "with --eval: the tau grid tried "
                                                         "on tune problems"})


def reaches(problem, rollout):
    """Does a rollout state the gold answer? An empty or answerless rollout does not."""
    return bool(rollout["steps"]) and match_answer(rollout["answer"], problem["answer"], problem.get("options"))


def mc_value(problem, policy, prefix, k, seed, cache=None):
    """(value, rollouts spent): the share of k rollouts from `prefix` that reach the gold answer. With a cache (a dict
    keyed by tuple(prefix)) a prefix is estimated once; a repeat costs nothing."""
    key = tuple(prefix)
    if cache is not None and key in cache:
        return cache[key], 0
    rs = policy.rollout(problem, list(prefix), k, seed)
    v = sum(reaches(problem, r) for r in rs) / max(len(rs), 1)
    if cache is not None:
        cache[key] = v
    return v, len(rs)


def label_mc(problem, policy, sol, k, seed, tau=TAU):
    """Math-Shepherd: the value of every prefix steps[:i+1] from k rollouts; the last step's value is whether the
    solution's own answer is right (no rollout needed). Soft label = value; predicted first error = the first step
    with value <= tau (hard label value > tau). -> (labels, first_error, rollouts)."""
    steps, values, spent = sol["steps"], [], 0
    for i in range(len(steps) - 1):
        v, n = mc_value(problem, policy, steps[:i + 1], k, seed)
        values.append(v)
        spent += n
    values.append(float(reaches(problem, sol)))
    return values, next((i for i, v in enumerate(values) if v <= tau), -1), spent


def prefix_labels(steps, fe, cache):
    """Soft labels: before the first error fe each prefix's estimate in cache, else 1.0; from fe on 0.0."""
    labels = [0.0 if fe != -1 and i >= fe else cache.get(tuple(steps[:i + 1]), 1.0) for i in range(len(steps))]
    if fe == -1:
        labels[-1] = 1.0  # the whole solution reached the answer
    return labels


class OutOfBudget(Exception):
    pass


def binary_search(steps, tau=TAU, lo=0):
    """Binary search for the first wrong step of a solution that missed the answer (OmegaPRM's insight: ~log2(n)
    value estimates, not n - 1), written as a generator: it yields each prefix whose value it needs and is sent
    that value back; it returns the first wrong step. Invariant: the error is in steps[lo..hi]; at first
    hi = n - 1, since the whole solution has value 0. value(prefix) <= tau: no continuation succeeds, the error is
    at or before its last step (search left); value > tau: that prefix is right, the error comes later (search
    right). Steps before lo: known right. first_error_search drives one search; label_rounds drives many at once."""
    hi = len(steps) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        value = yield steps[:mid + 1]
        if value > tau:
            lo = mid + 1
        else:
            hi = mid
    return lo


def first_error_search(steps, value, tau=TAU, lo=0):
    """binary_search with value(prefix) answering each question as it is asked."""
    search = binary_search(steps, tau, lo)
    try:
        prefix = next(search)
        while True:
            prefix = search.send(value(prefix))
    except StopIteration as done:
        return done.value


def select_score(steps, cache, visits, tau=TAU):
    """OmegaPRM's selection (Luo et al. 2024, Sec. 3.2), a PUCT variant over (state s, rollout r) pairs:
        Q(s, r) = alpha^(1 - MC(s)) * beta^(len(r) / L)      U(s) = c_puct * sqrt(sum_i N(s_i)) / (1 + N(s))
    and select argmax Q + U over pairs with 0 < MC(s) < 1 (states with both right and wrong continuations).
    Here r is a wrong sampled solution, s its longest prefix known right (the root at first), len(r) the steps
    after s, N(s) the searches started from s. Pairs with MC(s) in {0, 1} come after all others (OmegaPRM drops
    them; we still want every solution labelled). -> a sortable key."""
    a = 0
    for i in range(len(steps) - 1):
        v = cache.get(tuple(steps[:i + 1]))
        if v is not None and v <= tau:
            break
        a = i + 1 if v is not None else a
    s = tuple(steps[:a])
    return q_plus_u(cache[s], len(steps) - a, visits[s], sum(visits.values())), s


def q_plus_u(mc, steps_after, visits_here, visits_all):
    """OmegaPRM's selection key of a pair (state s, rollout r): (0 < MC(s) < 1, Q(s, r) + U(s)), with
    Q = alpha^(1 - MC(s)) * beta^(steps of r after s / L) and U = c_puct * sqrt(sum_i N(s_i)) / (1 + N(s))."""
    q = ALPHA ** (1 - mc) * BETA ** (steps_after / L_STEPS)
    u = C_PUCT * math.sqrt(visits_all) / (1 + visits_here)
    return (0 < mc < 1, q + u)


def label_mcts(problem, policy, sols, k, budget, seed, tau=TAU):
    """OmegaPRM-style labelling of one question's sampled solutions (they are the root's rollouts).
    Labels (soft): before the first error, the prefix's estimate where a search made one (as it is, even a chance
    low one on a solution that reached the answer: the soft label hides nothing), else 1.0 (known right
    without an estimate: on a solution that reached the answer, or before a prefix with value > tau, and a step
    cannot be wrong before a right prefix); the first error and every later step 0.0 (OmegaPRM: a prefix with
    value 0 and all that follows it). Rollouts are charged to the solution whose search spent them; a search the
    budget cuts leaves its solution, and every later one, unlabelled.
    -> ({j: (labels, first_error, rollouts)}, rollouts spent)."""
    right = [reaches(problem, s) for s in sols]
    cache = {(): sum(right) / max(len(sols), 1)}  # MC(root) from the sampled solutions themselves
    found = {j: -1 for j, ok in enumerate(right) if ok and sols[j]["steps"]}
    spent, visits = Counter(), Counter()
    pool = [j for j, ok in enumerate(right) if not ok and sols[j]["steps"]]
    while pool:
        # fork here: the selection rule (which wrong solution's first error to search next)
        keyed = {j: select_score(sols[j]["steps"], cache, visits, tau) for j in pool}
        j = max(pool, key=lambda i: keyed[i][0])
        pool.remove(j)
        visits[keyed[j][1]] += 1

        def value(prefix):
            if tuple(prefix) not in cache and sum(spent.values()) + k > budget:
                raise OutOfBudget
            v, n = mc_value(problem, policy, prefix, k, seed, cache)
            spent[j] += n
            return v
        try:
            found[j] = first_error_search(sols[j]["steps"], value, tau)
        except OutOfBudget:
            break
    return {j: (prefix_labels(sols[j]["steps"], fe, cache), fe, spent[j]) for j, fe in found.items()}, sum(spent.values())


def label_rounds(problems, policy, k, seed, samples, tau=TAU, progress=False):
    """label_mcts's binary search for many problems at once, in rounds: each round every unfinished search asks for
    the value of its next prefix, and one policy.rollout_many call answers all of them (a VLM generates hundreds of
    continuations per call instead of k). Estimates are cached per problem, as in label_mcts; with no budget cut
    the labels are label_mcts's (a test checks it on the synthetic policy). -> (records, stats) as label()."""
    t0 = time.time()
    roots = policy.rollout_many([(p, [], samples, tasks.seed_of(seed, "solutions")) for p in problems])
    cache = {p["id"]: {} for p in problems}
    spent = {(p["id"], j): 0 for p, sols in zip(problems, roots) for j in range(len(sols))}
    probs = {p["id"]: p for p in problems}
    searches = {(p["id"], j): binary_search(s["steps"], tau) for p, sols in zip(problems, roots)
                for j, s in enumerate(sols) if s["steps"] and not reaches(p, s)}
    waiting, found = {}, {}  # (problem, solution) -> the prefix its search waits for; -> its first error

    def advance(key, value=None):
        """Send a search the value it waited for (None: start it), then every value already known, until it asks
        for an unknown one or ends."""
        pid, search = key[0], searches[key]
        try:
            prefix = next(search) if value is None else search.send(value)
            while tuple(prefix) in cache[pid]:
                prefix = search.send(cache[pid][tuple(prefix)])
            waiting[key] = tuple(prefix)
        except StopIteration as done:
            found[key] = done.value
            waiting.pop(key, None)
    for key in searches:
        advance(key)
    bar = tqdm(desc="tree search rounds", disable=not progress, unit="round")
    while waiting:
        asks = {}  # (problem, prefix) -> the first search that asked for it (it is charged the rollouts)
        for key, prefix in waiting.items():
            asks.setdefault((key[0], prefix), key)
        reqs = list(asks)
        rollouts = policy.rollout_many([(probs[pid], list(prefix), k, tasks.seed_of(seed, "mcts"))
                                        for pid, prefix in reqs])
        for (pid, prefix), rs in zip(reqs, rollouts):
            cache[pid][prefix] = sum(reaches(probs[pid], r) for r in rs) / max(len(rs), 1)
            spent[asks[(pid, prefix)]] += len(rs)
        for key in list(waiting):  # every search moves on by the values now known
            advance(key, cache[key[0]][waiting[key]])
        bar.update(1)
    bar.close()
    records = []
    for p, sols in zip(problems, roots):
        for j, s in enumerate(sols):
            if not s["steps"]:
                continue
            fe = found.get((p["id"], j), -1)
            labels = prefix_labels(s["steps"], fe, cache[p["id"]])
            records.append({"id": f"{p['id']}-mcts{j:02d}", "images": [p.get("image") or f"images/{p['id']}.png"],
                            "prompt": p["question"], "completions": list(s["steps"]), "labels": labels,
                            "first_error": fe, "meta": {"rollouts": spent[(p["id"], j)], "method": "mcts",
                                                        "problem_id": p["id"], "correct": reaches(p, s)}})
    n_sols, rollouts = sum(len(s) for s in roots), sum(spent.values())
    return records, {"rollouts": rollouts, "records": len(records), "solutions": n_sols,
                     "seconds": round(time.time() - t0, 2), "rollouts_per_solution": round(rollouts / max(n_sols, 1), 3)}


def label_problem(problem, policy, method, k, budget, seed, samples, tau=TAU, image=None):
    """-> (records, rollouts spent, solutions sampled) for one problem: `samples` solutions from the root, each
    labelled (a solution with no step, possible from a VLM, has nothing to label and is left out). budget <= 0:
    2 * samples * k, two estimates per solution, which a search of a <= 4-step solution never needs more than."""
    budget = budget if budget > 0 else 2 * samples * k
    sols = policy.rollout(problem, [], samples, tasks.seed_of(seed, "solutions"))
    if method == "mc":
        res = {j: label_mc(problem, policy, s, k, tasks.seed_of(seed, "mc", j), tau) for j, s in enumerate(sols)
               if s["steps"]}
        spent = sum(n for _, _, n in res.values())
    elif method == "mcts":
        res, spent = label_mcts(problem, policy, sols, k, budget, tasks.seed_of(seed, "mcts"), tau)
    else:
        raise ValueError(f"unknown method {method!r}: expected mcts or mc")
    image = image or problem.get("image") or f"images/{problem['id']}.png"
    records = [{"id": f"{problem['id']}-{method}{j:02d}", "images": [image], "prompt": problem["question"],
                "completions": list(sols[j]["steps"]), "labels": labels, "first_error": fe,
                "meta": {"rollouts": n, "method": method, "problem_id": problem["id"],
                         "correct": reaches(problem, sols[j])}}
               for j, (labels, fe, n) in sorted(res.items())]
    return records, spent, len(sols)


# fork here: soft labels (each prefix's Monte-Carlo value) or hard ones; python bench.py --hard-labels compares
def hard_labels(record, tau=TAU):
    """A labelled record's labels as 1.0 / 0.0. Monte-Carlo ("mc") labels are each prefix's value: right when above
    tau. The others are right before the first error and wrong from it on."""
    if record["meta"]["method"] == "mc":
        return [float(v > tau) for v in record["labels"]]
    fe = record["first_error"]
    return [float(fe == -1 or i < fe) for i in range(len(record["labels"]))]


def oracle_labels(problems, policy, k, seed, samples, tau=TAU, progress=False):
    """The oracle's exact labels of the same sampled solutions: the upper bound of any tree search (no rollout).
    -> (records, stats) as label()."""
    roots = policy.rollout_many([(p, [], samples, tasks.seed_of(seed, "solutions")) for p in problems])
    records = []
    for p, sols in zip(problems, roots):
        image = p.get("image") or f"images/{p['id']}.png"
        for j, s in enumerate(sols):
            if s["steps"]:
                rec = tasks.labelled(p, {"id": f"{p['id']}-oracle{j:02d}", **s}, image)
                rec["meta"] = {"correct": match_answer(s["answer"], p["answer"]), "problem_id": p["id"],
                               "method": "oracle"}
                records.append(rec)
    return records, {"records": len(records), "rollouts": 0, "rollouts_per_solution": 0.0}


def mc_labels(problems, policy, k, seed, samples, tau=TAU, progress=False):
    return label(problems, policy, "mc", k, 0, seed, samples, tau, progress)


# How train labels are made from sampled solutions, each (problems, policy, K, seed, samples, tau, progress) ->
# (records, stats): bench.py --labels picks one. mcts: the binary search in batched rounds (label_rounds).
# fork here: a labeller of your own (python bench.py --labels NAME --tune-only shows its PRM on tune)
LABELLERS = {"mcts": label_rounds, "mc": mc_labels, "oracle": oracle_labels}


def label(problems, policy, method, k, budget, seed, samples, tau=TAU, progress=False):
    """In memory: -> (records, stats {rollouts, records, solutions, seconds, rollouts_per_solution}). A record's
    image is the problem's "image", else images/<id>.png (main writes it there, next to the output)."""
    t0, records, rollouts, sols = time.time(), [], 0, 0
    for p in tqdm(problems, desc=method, disable=not progress):
        recs, n, m = label_problem(p, policy, method, k, budget, seed, samples, tau)
        records += recs
        rollouts, sols = rollouts + n, sols + m
    return records, {"rollouts": rollouts, "records": len(records), "solutions": sols,
                     "seconds": round(time.time() - t0, 2), "rollouts_per_solution": round(rollouts / max(sols, 1), 3)}


def evaluate(n_problems=500, seed=0, k=16, budget=0, samples=4, tau=TAU, split="test", methods=("mc", "mcts"),
             policy=None):
    """The methods at the same K on synthetic problems of `split` (tune to choose tau, test to report), against the
    oracle: first_error_agreement (the predicted first error, or its absence, equals tasks.first_error; a solution
    left unlabelled counts as a miss) and step_label_accuracy (hard labels: mc value > tau, mcts before its first
    error, vs tasks.step_labels). policy: the synthetic one, or a VLMPolicy (mcts then runs in batched rounds)."""
    problems = {p["id"]: p for p in tasks.make_problems(n_problems, seed, split)}
    policy, res = policy or SyntheticPolicy(), {}
    for method in methods:
        if method == "mcts" and budget <= 0:  # the same labels as label(), batched
            recs, st = label_rounds(list(problems.values()), policy, k, seed, samples, tau)
        else:
            recs, st = label(list(problems.values()), policy, method, k, budget, seed, samples, tau)
        q = label_counts(problems, recs, tau)["all"]
        res[method] = {"rollouts_per_solution": st["rollouts_per_solution"],
                       "first_error_agreement": round(q["agree"] / max(st["solutions"], 1), 4),
                       "step_label_accuracy": round(q["steps_right"] / max(q["steps"], 1), 4),
                       "seconds": st["seconds"]}
    return res


def label_counts(problems, records, tau=TAU):
    """Labelled records against the oracle, over all of them and apart for the lucky ones (a right final answer
    after a wrong step: rollouts from that step still reach the answer, so a Monte-Carlo label calls it right) and
    the rest: {"all" | "lucky" | "rest": {"records", "agree" (first error as the oracle's), "steps", "steps_right"
    (hard labels as the oracle's)}}. problems: {id: problem}."""
    out = {part: {"records": 0, "agree": 0, "steps": 0, "steps_right": 0} for part in ("all", "lucky", "rest")}
    for r in records:
        p = problems[r["meta"]["problem_id"]]
        true_fe = tasks.first_error(p, r["completions"])
        lucky = bool(r["meta"]["correct"]) and true_fe != -1
        hard = hard_labels(r, tau)
        for part in ("all", "lucky" if lucky else "rest"):
            c = out[part]
            c["records"] += 1
            c["agree"] += r["first_error"] == true_fe
            c["steps"] += len(hard)
            c["steps_right"] += sum(h == o for h, o in zip(hard, tasks.step_labels(p, r["completions"])))
    return out


def consensus(records, likelihoods):
    """A consensus filter (as Athena-PRM and VL-PRMs keep only labels two sources agree on), by solution: keep a
    labelled solution only where a second source, the base's own step likelihood (one list per record), puts the
    first error where the labels do (-1: none). The likelihood's threshold is the one of its percentiles that agrees
    most often (the lowest among equals). -> (kept records, {"threshold", "kept", "of"})."""
    def first_below(values, t):
        return next((i for i, v in enumerate(values) if v < t), -1)
    pairs = [(r, lk) for r, lk in zip(records, likelihoods) if lk is not None]
    values = sorted(v for _, lk in pairs for v in lk)
    grid = sorted({values[len(values) * q // 100] for q in range(100)} | {0.0}) if values else [0.0]  # percentiles

    def agreeing(t):
        return [r for r, lk in pairs if first_below(lk, t) == r["first_error"]]
    best = max(grid, key=lambda t: (len(agreeing(t)), -t)) if pairs else 0.0
    kept = agreeing(best)
    return kept, {"threshold": best, "kept": len(kept), "of": len(records)}


def label_quality(problems, records, tau=TAU):
    """label_counts as shares: {"all" | "lucky" | "rest": {"records", "first_error_agreement",
    "step_label_accuracy"}} (None where a part has no record)."""
    return {part: {"records": c["records"],
                   "first_error_agreement": round(c["agree"] / c["records"], 4) if c["records"] else None,
                   "step_label_accuracy": round(c["steps_right"] / c["steps"], 4) if c["steps"] else None}
            for part, c in label_counts(problems, records, tau).items()}


# What makes the labels: --resume continues only a run made with the same values (the batch size too: it changes
# which continuations a VLM policy samples together).
RUN_KEYS = ("policy", "method", "n_problems", "rollouts", "budget", "samples", "tau", "seed", "split", "strength",
            "temperature", "max_new_tokens", "batch_size", "hard_labels")


def image_name(p):
    """images/ID-HASH.png: the hash of the problem itself, so runs with other seeds or splits (same ids, other
    problems) cannot overwrite each other's pictures."""
    return f"images/{p['id']}-{tasks.seed_of(json.dumps(p, sort_keys=True)) % 16 ** 8:08x}.png"


def make_policy(a):
    """--policy: the synthetic sampler, or a checkpoint the loader reads."""
    if a.policy == "synthetic":
        return SyntheticPolicy(a.strength)
    if a.policy.startswith(("http://", "https://")):
        raise ValueError(f"--policy {a.policy}: a served policy runs as python -m lab.api label --policy URL ...")
    return VLMPolicy(a.policy, a.temperature, a.max_new_tokens, a.batch_size)


def main(a: Args, policy=None):
    if a.eval:  # tau chosen on tune problems (MCTS first-error agreement), then both methods on test problems
        t0, grid = time.time(), [float(t) for t in a.taus.split(",")]
        tune = {t: evaluate(a.n_problems or 500, a.seed, a.rollouts, a.budget, a.samples, t, "tune", ("mcts",))
                ["mcts"]["first_error_agreement"] for t in grid}
        a.tau = max(grid, key=lambda t: tune[t])
        print("tau on tune (first-error agreement): " + ", ".join(f"{t}: {v:.3f}" for t, v in tune.items()))
        res = evaluate(a.n_problems or 500, a.seed, a.rollouts, a.budget, a.samples, a.tau)
        print(f"{'method':<6} {'rollouts/solution':>18} {'first-error agreement':>22} {'step-label accuracy':>20}")
        for m, r in res.items():
            print(f"{m:<6} {r['rollouts_per_solution']:>18.2f} {r['first_error_agreement']:>22.3f} "
                  f"{r['step_label_accuracy']:>20.3f}")
        print(f"K={a.rollouts} tau={a.tau} samples={a.samples}, {a.n_problems or 500} test problems, "
              f"{time.time() - t0:.1f}s; mcts/mc rollouts "
              f"{res['mcts']['rollouts_per_solution'] / max(res['mc']['rollouts_per_solution'], 1e-9):.2f}")
        print(json.dumps(res))
        return res
    out, t0 = Path(a.out), time.time()
    done_file = Path(str(out) + ".done")
    (out.parent / "images").mkdir(parents=True, exist_ok=True)
    data.check_resume(out, {k: getattr(a, k) for k in RUN_KEYS}, a.resume)
    done = data.finished(out) if a.resume else {}
    kept, redo = data.keep_finished(out, done, "labelled") if a.resume else (0, set())
    if redo:  # OUT.done lists only what is kept
        done = {pid: n for pid, n in done.items() if pid not in redo}
        done_file.write_text("".join(f"{pid} {n}\n" for pid, n in done.items()))
    policy = policy or make_policy(a)  # lab/api.py passes a served policy
    problems = [p for p in tasks.make_problems(a.n_problems or 20, a.seed, a.split) if p["id"] not in done]
    rollouts = written = 0

    def one(p):
        if p.get("image"):  # a problem file's image: its path relative to the output's folder
            image = os.path.relpath(Path(p["image"]).absolute(), out.parent.absolute())
        else:  # rendered there
            image = image_name(p)
            tasks.render(p).save(out.parent / image)
        return p, label_problem(p, policy, a.method, a.rollouts, a.budget, a.seed, a.samples, a.tau, image)
    # a served policy (it has problems_in_flight) takes --batch-size problems at once, its requests batched
    served = getattr(policy, "problems_in_flight", 0) > 1
    bar = tqdm((ThreadPoolExecutor(a.batch_size).map if served else map)(one, problems), total=len(problems),
               desc=f"{a.method} K={a.rollouts}")
    for p, (recs, n, _) in bar:
        for r in recs:
            if a.hard_labels:
                r["labels"] = hard_labels(r, a.tau)
            data.append_jsonl(out, r, "labelled")
        with open(done_file, "a") as f:  # the problem is finished only once all its records are on disk
            f.write(f"{p['id']} {len(recs)}\n")
        rollouts, written = rollouts + n, written + len(recs)
        bar.set_postfix(rollouts=rollouts, records=written)
    print(f"rollouts {rollouts}, records {written} (+{kept} kept from before), {len(problems)} problems, "
          f"{time.time() - t0:.1f}s -> {out}")
    return {"rollouts": rollouts, "records": written, "kept": kept, "seconds": round(time.time() - t0, 2)}


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
