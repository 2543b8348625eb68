"""The evidence on literal inputs: exact accuracy@N against brute-force enumeration, bootstrap intervals, paired
comparisons, verdicts; and the content-disjoint splits over what bench.py and the tiny base actually use."""
import itertools
import json
import math
import random

import pytest

import bon
from lab import evidence
from common import metrics
from common import tasks
import train


def brute(items, kind, n):
    subs = list(itertools.combinations(range(len(items)), n))
    return sum(bon.expected([items[i] for i in s], kind) for s in subs) / len(subs)


def test_exact_accuracy_at_n_equals_enumeration():
    rng = random.Random(1)
    for _ in range(300):
        m = rng.randint(1, 9)
        n = rng.randint(1, m)
        items = [(rng.choice("abc"), float(rng.random() < 0.5), rng.choice([None, 0.1, 0.5, 0.5, 0.9, rng.random()]))
                 for _ in range(m)]
        for kind in ("max", "random", "oracle", "majority", "vote"):
            value, var = bon.at_n(items, kind, n)
            assert value == pytest.approx(brute(items, kind, n), abs=1e-12) and var == 0.0


def test_argmax_closed_form_on_a_literal_pool():
    # scores 0.9 (wrong), 0.5 (right), 0.5 (wrong), 0.1 (right); N=2 of 4: 6 subsets
    items = [("a", 0.0, 0.9), ("b", 1.0, 0.5), ("c", 0.0, 0.5), ("d", 1.0, 0.1)]
    # {0,x}: 3 subsets pick the wrong 0.9; {1,2}: tie 0.5 -> 0.5; {1,3}: right; {2,3}: wrong -> 1.5 / 6
    assert bon.at_n(items, "max", 2)[0] == pytest.approx(1.5 / 6)
    assert bon.at_n(items, "oracle", 2)[0] == pytest.approx(1 - 1 / 6)  # only {0,2} has no right answer


def test_votes_beyond_the_exact_limit_are_sampled_with_their_error(monkeypatch):
    monkeypatch.setattr(bon, "EXACT_LIMIT", 10)
    items = [(str(i % 3), float(i % 3 == 0), None) for i in range(9)]
    value, var = bon.at_n(items, "majority", 4, seed=0, name="p")
    assert var > 0 and abs(value - brute(items, "majority", 4)) < 4 * math.sqrt(var) + 1e-9
    assert bon.at_n(items, "majority", 4, seed=0, name="p") == (value, var)  # seeded: the same draws


def test_bootstrap_interval_brackets_the_mean_and_pairs():
    v = [0.0, 1.0] * 50
    c = metrics.bootstrap(v)
    assert c["mean"] == 0.5 and c["lo"] < 0.5 < c["hi"] and c["hi"] - c["lo"] < 0.25
    flat = pytest.approx(0.7)  # np.mean of thirty 0.7s is 0.6999999999999997
    assert metrics.bootstrap([0.7] * 30) == {"mean": flat, "lo": flat, "hi": flat, "n": 30, "clusters": 30}
    d = metrics.paired([1.0] * 40, [0.0] * 20 + [1.0] * 20)
    assert d["mean"] == 0.5 and d["lo"] > 0 and metrics.verdict(d) == "holds" and metrics.verdict(d, -1) == "opposite"
    assert metrics.verdict(metrics.paired(v, list(reversed(v)))) == "not resolved"
    with pytest.raises(ValueError, match="not the same problems"):
        metrics.paired([1.0], [1.0, 0.0])


def test_clusters_widen_the_interval_when_problems_repeat_content():
    v = [float(i % 2) for i in range(200)]
    narrow = metrics.bootstrap(v)
    wide = metrics.bootstrap(v, clusters=[i % 40 for i in range(200)])  # 40 contents, each all 0 or all 1
    assert wide["hi"] - wide["lo"] > 2 * (narrow["hi"] - narrow["lo"])  # about sqrt(5) wider


def test_first_error_f1_interval_matches_the_point_metric(monkeypatch):
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # six literal solutions
    true = [-1, -1, 0, 1, 2, 1]
    pred = [-1, 0, 0, 1, 0, -1]
    scores = [[1.0] * 3 if p == -1 else [1.0] * p + [0.0] for p in pred]
    r = metrics.first_error_f1_ci(pred, true)
    ref = metrics.first_error_f1(scores, true, 0.5)
    assert r["mean"] == pytest.approx(ref["f1"]) and r["acc_error"] == ref["acc_error"]
    assert r["lo"] <= r["mean"] <= r["hi"]


def test_auc_fast_equals_auc_with_ties():
    rng = random.Random(3)
    s = [round(rng.random(), 1) for _ in range(200)]
    y = [rng.random() < x for x in s]
    assert metrics.auc_fast(s, y) == pytest.approx(metrics.auc(s, y))


def rows_for(a_acc, b_acc, method_a="prm_head", method_b="orm", families=None):
    rows = []
    for i, (x, y) in enumerate(zip(a_acc, b_acc)):
        fam = (families or ["visual", "text"])[i % 2]
        for m, v in ((method_a, x), (method_b, y)):
            rows.append({"problem": f"p{i}", "content": f"c{i}", "family": fam, "pool": "synthetic", "method": m,
                         "acc": {"1": 0.5, "16": v}})
    return rows


def test_compare_is_paired_and_split_verdicts(monkeypatch):
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # a few literal problems
    ix = evidence.index(rows_for([1.0] * 40, [0.0] * 40))
    c = evidence.compare(ix, "synthetic", "prm_head", "orm", 16)
    assert c["mean"] == 1.0 and c["n"] == 40
    # PRM ahead on visual, ORM ahead on text: "neither wins everywhere" holds
    ix = evidence.index(rows_for([1.0, 0.0] * 20, [0.0, 1.0] * 20))
    comps = {"prm_vs_orm_visual": evidence.compare(ix, "synthetic", "prm_head", "orm", 16, "visual"),
             "prm_vs_orm_text": evidence.compare(ix, "synthetic", "prm_head", "orm", 16, "text")}
    v = {x["finding"]: x["verdict"] for x in evidence.verdicts(comps)}
    assert v["neither ORM nor PRM wins everywhere"] == "holds"
    assert v["weighting key steps beats equal weights"] == "not run"
    ix = evidence.index(rows_for([1.0] * 40, [0.0] * 40))  # PRM ahead in both families: the finding is contradicted
    comps = {k: evidence.compare(ix, "synthetic", "prm_head", "orm", 16, p) for k, p in
             (("prm_vs_orm_visual", "visual"), ("prm_vs_orm_text", "text"))}
    assert v_of(comps)["neither ORM nor PRM wins everywhere"] == "opposite"


def v_of(comps):
    return {x["finding"]: x["verdict"] for x in evidence.verdicts(comps)}


def test_f1_difference_is_paired_over_the_answers_both_scored(monkeypatch):
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # a few literal problems
    """The headline's first-error F1 comparison: F1(a) - F1(b) on the same answers, its interval from the same
    resampled clusters (so identical predictions give exactly 0), and a verdict from it."""
    items = []
    for i in range(60):
        true = -1 if i % 3 == 0 else i % 4
        items.append({"key": "prm@base", "candidate": f"c{i}", "content": f"k{i % 20}", "true": true, "pred": true})
        items.append({"key": "orm@base", "candidate": f"c{i}", "content": f"k{i % 20}", "true": true,
                      "pred": -1 if i % 2 else true})
    items.append({"key": "orm@base", "candidate": "only-b", "content": "k0", "true": 1, "pred": 1})  # not paired
    d = evidence.f1_difference(items, "prm@base", "orm@base")
    a = [x for x in items if x["key"] == "prm@base"]
    b = [x for x in items if x["key"] == "orm@base" and x["candidate"] != "only-b"]
    want = (metrics.first_error_f1_ci([x["pred"] for x in a], [x["true"] for x in a])["mean"]
            - metrics.first_error_f1_ci([x["pred"] for x in b], [x["true"] for x in b])["mean"])
    assert d["n"] == 60 and abs(d["mean"] - want) < 1e-12 and d["lo"] > 0
    same = evidence.f1_difference(items, "prm@base", "prm@base")
    assert (same["mean"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    comps = evidence.with_f1({}, items)
    assert comps["headline_f1_prm_vs_orm"] == d and "headline_f1_prm_vs_base_likelihood" not in comps  # no b: left out


def row(pid, fam, method, acc, content=None):
    return {"problem": pid, "content": content or pid, "family": fam, "pool": "synthetic", "method": method,
            "acc": acc}


def test_compare_gain_is_text_gain_minus_visual_gain_unpaired(monkeypatch):
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # four literal problems
    # gains over one sample at N=16: text problems +0.5 and +0.3 (mean 0.4), visual +0.1 and +0.1 (mean 0.1)
    rows = [row("t1", "text", "prm_head", {"1": 0.25, "16": 0.75}),
            row("t2", "text", "prm_head", {"1": 0.5, "16": 0.8}),
            row("v1", "visual", "prm_head", {"1": 0.5, "16": 0.6}),
            row("v2", "visual", "prm_head", {"1": 0.0, "16": 0.1}),
            row("v3", "visual", "orm", {"1": 0.0, "16": 1.0})]  # another method: not read
    c = evidence.compare_gain(evidence.index(rows), "synthetic", "prm_head", 16)
    assert c["mean"] == pytest.approx(0.4 - 0.1) and c["n"] == 4
    assert c["lo"] == pytest.approx(0.3 - 0.1) and c["hi"] == pytest.approx(0.5 - 0.1)  # text: 0.3, 0.4 or 0.5
    assert (c["a"], c["b"], c["part"], c["n_best"]) == ("prm_head gain (text)", "prm_head gain (visual)",
                                                         "text - visual", 16)
    assert metrics.verdict(c) == "holds"
    # no visual problem: nothing to compare
    assert evidence.compare_gain(evidence.index(rows[:2]), "synthetic", "prm_head", 16)["mean"] is None


def test_compare_diff_is_the_visual_difference_minus_the_text_difference(monkeypatch):
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # a few literal problems
    # a - b: visual +0.5 and +0.5, text 0.0 and -0.25 -> 0.5 - (-0.125) = 0.625
    acc = {"v1": (1.0, 0.5), "v2": (0.75, 0.25), "t1": (0.5, 0.5), "t2": (0.5, 0.75)}
    rows = [row(p, "visual" if p[0] == "v" else "text", m, {"1": 0.5, "16": x})
            for p, xs in acc.items() for m, x in zip(("prm_head", "chunks_head"), xs)]
    c = evidence.compare_diff(evidence.index(rows), "synthetic", "prm_head", "chunks_head", 16)
    assert c["mean"] == pytest.approx(0.625) and c["n"] == 4
    assert c["lo"] == pytest.approx(0.5) and c["hi"] == pytest.approx(0.75)  # text: 0.0, -0.125 or -0.25
    assert (c["a"], c["b"], c["part"]) == ("prm_head - chunks_head (visual)", "prm_head - chunks_head (text)",
                                           "visual - text")
    # a problem that only one method has is left out of its family's differences
    c = evidence.compare_diff(evidence.index(rows + [row("v3", "visual", "prm_head", {"1": 0.5, "16": 0.0})]), "synthetic",
                       "prm_head", "chunks_head", 16)
    assert c["mean"] == pytest.approx(0.625) and c["n"] == 4


def test_splits_are_disjoint_by_content_over_bench_and_the_pretraining_stream():
    kinds = {k: tasks.split_contents(k) for k in tasks.KINDS}
    for k, d in kinds.items():  # every content in exactly one split
        assert sum(len(v) for v in d.values()) == len(tasks.contents(k)) == len(set().union(*map(set, d.values())))
    seen = {s: {tasks.content_of(p) for p in tasks.make_problems(n, 0, s)}
            for s, n in (("train", 2000), ("tune", 80), ("dev", 60), ("test", 240))}
    stream = set()  # the tiny base's pretraining batches (train.py --data synthetic): a large sample of them
    for step in range(0, 5000, 5):
        stream |= {tasks.content_of(p) for p in train.synthetic_problems(step, 32, 0)}
    assert stream == {(k, c) for k, d in kinds.items() for c in d["train"]}  # all of train, nothing else
    for s in ("tune", "dev", "test"):
        assert not seen[s] & seen["train"] and not seen[s] & stream
        assert all(tasks.split_of(p) == s for p in tasks.make_problems(40, 0, s))
    assert not seen["test"] & seen["tune"] and not seen["test"] & seen["dev"] and not seen["tune"] & seen["dev"]
    with pytest.raises(ValueError, match="unknown split"):
        tasks.make_problems(1, 0, "eval")


def test_the_writers_stream_covers_every_split_and_the_bases_only_train():
    """--data synthetic-all (the stronger policy's pretraining, a writer only) draws every split's contents in
    proportion to its share; the default stream stays on train. Both depend only on (seed, step)."""
    drawn = [p for step in range(200) for p in train.synthetic_problems(step, 32, 0, contents="all")]
    shares = {s: sum(p["split"] == s for p in drawn) / len(drawn) for s in tasks.SPLITS}
    assert shares == pytest.approx(tasks.SPLITS, abs=0.02)
    assert all(tasks.split_of(p) == p["split"] for p in drawn[:500])
    assert train.synthetic_problems(7, 32, 0, contents="all") == train.synthetic_problems(7, 32, 0, contents="all")
    assert {p["split"] for p in train.synthetic_problems(7, 32, 0)} == {"train"}


def test_the_content_free_rule_guesses_one_first_error_per_family_chosen_on_dev():
    """Visual answers mostly go wrong at step 1 and text answers mostly not at all: the rule that reads no content
    guesses exactly that, and scores the F1 such a guess earns."""
    probs = [{"id": f"v{i}", "family": "visual"} for i in range(4)] + [{"id": f"t{i}", "family": "text"}
                                                                        for i in range(4)]
    truth = {"v0": 0, "v1": 0, "v2": 0, "v3": -1, "t0": -1, "t1": -1, "t2": -1, "t3": 1}
    cands = [{"problem_id": pid, "first_error": fe} for pid, fe in truth.items()]
    rule = evidence.content_free_rule(probs, cands)
    assert rule == {"text": -1, "visual": 0}
    pred = [rule[p["family"]] for p in probs]
    assert metrics.f1_of_predictions(pred, list(truth.values())) == pytest.approx(2 / (1 / 0.75 + 1 / 0.75))


def test_a_second_run_appended_to_the_rows_is_an_error_naming_both_lines(tmp_path):
    rows = [row("p1", "text", "prm_head", {"16": 1.0}), row("p1", "text", "orm", {"16": 0.0})]
    path = tmp_path / "per_problem.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    with pytest.raises(ValueError, match=r"problem p1, pool synthetic, method prm_head: two rows \(line 1, line 3\)"):
        evidence.index(evidence.read_rows(path))


def test_the_cli_pairs_a_method_with_the_same_method_of_another_run(tmp_path, capsys):
    """--b-rows: b read from another run's rows (the PRM on other labels), paired by problem."""
    def write(path, accs):
        rows = [{"pool": "meta", "seed": 0}] + [
            {"problem": f"p{i}", "content": f"c{i}", "family": "visual", "pool": "base", "method": "prm_head",
             "acc": {"16": x}} for i, x in enumerate(accs)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path / "a.jsonl", [1.0, 1.0, 0.5, 0.0])
    write(tmp_path / "b.jsonl", [0.0, 1.0, 0.5, 0.0])
    c = evidence.main([str(tmp_path / "a.jsonl"), "--a", "prm_head", "--b", "prm_head", "--b-rows",
                       str(tmp_path / "b.jsonl")])
    assert c["mean"] == pytest.approx(0.25) and c["n"] == 4
    assert "(b from" in capsys.readouterr().out
    same = evidence.main([str(tmp_path / "a.jsonl"), "--a", "prm_head", "--b", "prm_head"])
    assert same["mean"] == 0.0  # without --b-rows: the run against itself
