"""OmegaPRM in full (Luo et al. 2024, "Improve Mathematical Reasoning in Language Models by Automated Process
Supervision", Sec. 3 and Alg. 1), and the comparison at equal rollout budgets with Math-Shepherd MC and with binary
search alone.

    python omegaprm.py                                   # the equal-budget table: tune problems, JSON last line
    python omegaprm.py --split test --budgets 32,64,128  # any split and budgets (rollouts per question)

A tree per question. Its states are solution prefixes; a state s carries MC(s), the share of the k rollouts from s
that reach the gold answer, and N(s), how often a search started from it. The pool holds (s, r) pairs: r a wrong
rollout from s (a whole solution, s's steps then its own). Each iteration:
  1. select argmax Q(s, r) + U(s) over the pool's pairs with 0 < MC(s) < 1 (their Sec. 3, the selection):
       Q(s, r) = alpha^(1 - MC(s)) * beta^(len(r) / L)     U(s) = c_puct * sqrt(sum_i N(s_i)) / (1 + N(s))
     (pairs with MC(s) in {0, 1} come after: the paper drops them);
  2. binary search along r, from s, for its first error: each prefix tested gets k rollouts and becomes a state,
     and its wrong rollouts join the pool (this is where the tree grows: a rollout is searched from the deepest
     state known right, not from the root);
  3. N(s) += 1.
until the question's rollout budget is spent or the pool is empty. Each searched rollout is a step-labelled record:
the prefixes' MC values before its first error (1.0 where none was estimated), 0 from the first error on.

The comparison gives every method the same question, the same `samples` first rollouts from the root (counted in the
budget) and the same budget: "mc" estimates every prefix of the first rollouts in turn, "binary" searches the wrong
first rollouts in turn (tree_search's label_mcts without its selection), "mcts" is the above. It counts the distinct
first errors found (wrong by the oracle) per 100 rollouts, the quantity the selection is meant to raise.
"""
import json
from dataclasses import dataclass, field

from common import cli, tasks
from policy import SyntheticPolicy
from tree_search import TAU, OutOfBudget, first_error_search, prefix_labels, q_plus_u, reaches


@dataclass
class Args:
    split: str = field(default="tune", metadata={"help": "problems: tune (where tau is chosen) | test | ..."})
    n_problems: int = field(default=200, metadata={"range": (1, None), "help": "questions"})
    budgets: str = field(default="24,48,96", metadata={"type": cli.listed(int, 1),
                                                       "help": "rollouts per question, comma-separated"})
    rollouts: int = field(default=8, metadata={"range": (1, None), "help": "k: rollouts per value estimate"})
    samples: int = field(default=8, metadata={"range": (1, None),
                                              "help": "first rollouts from the root (counted in the budget)"})
    tau: float = field(default=TAU, metadata={"range": (0.0, 1.0),
                                              "help": "a prefix is right when its value > tau"})
    seed: int = field(default=0, metadata={"help": "seed of the problems and every rollout"})


def select_key(s, r, tree, visits):
    """Q(s, r) + U(s), with pairs whose MC(s) is 0 or 1 after all others (-> a sortable key)."""
    return q_plus_u(tree[s], len(r) - len(s), visits.get(s, 0), sum(visits.values()))


def search(problem, policy, k, budget, seed, samples, tau=TAU, method="mcts", key=select_key):
    """One question, one method, one budget -> (records [(steps, labels, first error)], rollouts spent)."""
    spent, tree, visits, done = samples, {}, {}, []
    first = policy.rollout(problem, [], samples, tasks.seed_of(seed, "root"))
    tree[()] = sum(reaches(problem, r) for r in first) / samples
    pool = [((), tuple(r["steps"])) for r in first if r["steps"] and not reaches(problem, r)]

    def value(prefix):  # a prefix's MC estimate, a new state (its wrong rollouts join the pool under mcts)
        nonlocal spent
        if prefix not in tree:
            if spent + k > budget:
                raise OutOfBudget
            rs = policy.rollout(problem, list(prefix), k, tasks.seed_of(seed, "mcts"))
            spent += len(rs)
            tree[prefix] = sum(reaches(problem, r) for r in rs) / max(len(rs), 1)
            if method == "mcts" and tree[prefix] > tau:  # a prefix known wrong already holds its first error
                pool.extend((prefix, tuple(r["steps"])) for r in rs if r["steps"] and not reaches(problem, r))
        return tree[prefix]
    while pool:
        # fork here: the selection rule
        s, r = max(pool, key=lambda p: key(p[0], p[1], tree, visits)) if method == "mcts" else pool[0]
        pool.remove((s, r))
        try:
            if method == "mc":  # Math-Shepherd: every prefix estimated; the first with value <= tau is the error
                vals = [value(r[:i + 1]) for i in range(len(r) - 1)]
                fe = next((i for i, v in enumerate(vals) if v <= tau), len(r) - 1)
            else:  # binary search from s (known right: every step of s is before the error)
                fe = first_error_search(r, value, tau, lo=len(s))
        except OutOfBudget:
            break
        visits[s] = visits.get(s, 0) + 1
        done.append((list(r), prefix_labels(r, fe, tree), fe))
    return done, spent


def compare(problems, policy, budgets, k, samples, tau, seed, methods=("mc", "binary", "mcts"), key=select_key):
    """{budget: {method: {first_error_agreement, step_label_accuracy, negatives_per_100, records, rollouts}}}:
    negatives = distinct (question, steps up to the first error) whose first error the oracle confirms."""
    out = {}
    for b in budgets:
        out[str(b)] = {}
        for m in methods:
            recs, spent, negs, agree, ok, steps = 0, 0, set(), 0, 0, 0
            for p in problems:
                done, n = search(p, policy, k, b, seed, samples, tau, m, key)
                spent += n
                for st, labels, fe in done:
                    truth = tasks.first_error(p, st)
                    recs, agree = recs + 1, agree + (fe == truth)
                    ok += sum((y > 0) == (o > 0) for y, o in zip(labels, tasks.step_labels(p, st)))
                    steps += len(st)
                    if fe == truth != -1:
                        negs.add((p["id"], tuple(st[:fe + 1])))
            out[str(b)][m] = {"first_error_agreement": round(agree / max(recs, 1), 4),
                              "step_label_accuracy": round(ok / max(steps, 1), 4),
                              "negatives_per_100": round(100 * len(negs) / max(spent, 1), 2), "records": recs,
                              "rollouts": spent}
    return out


def main(a: Args):
    probs = tasks.make_problems(a.n_problems, a.seed, a.split)
    budgets = [int(b) for b in a.budgets.split(",")]
    res = compare(probs, SyntheticPolicy(), budgets, a.rollouts, a.samples, a.tau, a.seed)
    print(f"{'budget':>6} {'method':<7} {'first errors found / 100 rollouts':>34} {'first-error agreement':>22} "
          f"{'step-label accuracy':>20} {'records':>8}")
    for b, row in res.items():
        for m, r in row.items():
            print(f"{b:>6} {m:<7} {r['negatives_per_100']:>34.2f} {r['first_error_agreement']:>22.3f} "
                  f"{r['step_label_accuracy']:>20.3f} {r['records']:>8}")
    print(f"{a.n_problems} {a.split} problems, k={a.rollouts}, {a.samples} first rollouts, tau={a.tau}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
