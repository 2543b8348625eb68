"""omegaprm.py: the selection matters, the budget holds, the tree grows from intermediate states, the methods
compare at equal budgets."""
import policy
import omegaprm
from common import tasks
import tree_search


def test_selection_changes_the_labels_and_the_budget_holds():
    probs = tasks.make_problems(40, 0, "tune")
    pol = policy.SyntheticPolicy()
    runs = {}
    for name, key in (("puct", omegaprm.select_key), ("constant", lambda s, r, tree, visits: 0.0)):
        runs[name] = [omegaprm.search(p, pol, 8, 48, 0, 8, 0.2, "mcts", key) for p in probs]
    assert all(n <= 48 for res in runs.values() for _, n in res)  # each question within its budget
    labels = {name: [[(tuple(st), tuple(lab)) for st, lab, _ in done] for done, _ in res] for name, res in runs.items()}
    assert labels["puct"] != labels["constant"]  # Q + U picks other rollouts to search than a constant order
    # the tree grows: some searched rollouts start below the root (a prefix estimated earlier, then its continuation)
    first = {p["id"]: {tuple(r["steps"]) for r in pol.rollout(p, [], 8, tasks.seed_of(0, "root"))} for p in probs}
    assert any(tuple(st) not in first[p["id"]] for p, (done, _) in zip(probs, runs["puct"]) for st, _, _ in done)


def test_select_key_is_q_plus_u():
    tree, visits = {(): 0.5, ("a",): 0.75, ("b",): 1.0}, {(): 3, ("a",): 1}
    key = omegaprm.select_key(("a",), ("a", "x", "y"), tree, visits)
    want = tree_search.ALPHA ** 0.25 * tree_search.BETA ** (2 / tree_search.L_STEPS) + tree_search.C_PUCT * 4 ** 0.5 / 2
    assert key[0] and abs(key[1] - want) < 1e-12
    assert not omegaprm.select_key(("b",), ("b", "x"), tree, visits)[0]  # MC = 1: after every pair with 0 < MC < 1


def test_equal_budget_comparison_counts_confirmed_first_errors():
    probs = tasks.make_problems(30, 1, "tune")
    res = omegaprm.compare(probs, policy.SyntheticPolicy(), [24, 48], 8, 8, 0.2, 1)
    for b in ("24", "48"):
        for m in ("mc", "binary", "mcts"):
            r = res[b][m]
            assert r["rollouts"] <= int(b) * len(probs) and 0 <= r["first_error_agreement"] <= 1
            assert r["negatives_per_100"] * r["rollouts"] / 100 <= r["records"] + 1e-9
    assert res["48"]["mcts"]["records"] >= res["24"]["mcts"]["records"]
