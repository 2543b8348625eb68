"""bon.py: aggregation and selection rules on literal pools with exact expected values, accuracy@N, the ViLBench
filter, the table, the score-file CLI and the MATH-V pool (model-free, and tiny-init on 3 problems against scores
computed here). The step metrics (AUC, first-error F1) are tests/test_metrics.py's."""
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common.mathv import MATHV, load_mathv  # noqa: E402
import bon  # noqa: E402
from common import data  # noqa: E402
from common import metrics  # noqa: E402
from common import model as vlm  # noqa: E402
import prm  # noqa: E402
from common import tasks  # noqa: E402
from bon import accuracy_at_n, select, table, vilbench_filter  # noqa: E402


def cand(answer, correct, **scores):
    return {"answer": answer, "correct": correct, "scores": scores}


def test_aggregate_literal():
    s = [0.9, 0.5, 0.8, 0.6]
    assert bon.aggregate(s, "min") == 0.5
    assert bon.aggregate(s, "mean") == pytest.approx(0.7)
    assert bon.aggregate(s, "prod") == pytest.approx(0.9 * 0.5 * 0.8 * 0.6)
    assert bon.aggregate(s, "last") == 0.6
    assert bon.aggregate(s, "last2") == pytest.approx(0.7)
    assert bon.aggregate(s, "last3") == pytest.approx((0.5 + 0.8 + 0.6) / 3)
    assert bon.aggregate(s, "last9") == pytest.approx(0.7)
    assert bon.aggregate([], "min") == 0.0
    with pytest.raises(ValueError):
        bon.aggregate(s, "no-such-aggregation")


@pytest.mark.parametrize("name", list(bon.AGGREGATIONS))
def test_every_aggregation_is_a_score_that_no_better_step_lowers(name):
    """Each member: step scores in [0, 1] give an answer score in [0, 1], and raising any one step's score never
    lowers it (a fork's new aggregation is checked the same way)."""
    rng = random.Random(name)
    for _ in range(200):
        s = [rng.random() for _ in range(rng.randint(1, 6))]
        v = bon.aggregate(s, name)
        assert 0.0 <= v <= 1.0
        i = rng.randrange(len(s))
        assert bon.aggregate(s[:i] + [min(1.0, s[i] + rng.random())] + s[i + 1:], name) >= v - 1e-12
    assert set(bon.AGGS) == set(bon.AGGREGATIONS) and f"prm_{name}" in bon.METHODS


def test_random_is_the_exact_mean_correctness():
    pool = [cand("1", True), cand("2", False), cand("3", False), cand("1", True), cand("4", False)]
    assert select(pool, "random") == pytest.approx(2 / 5, abs=0)
    assert select([], "random") == 0.0


def test_majority_groups_normalized_answers_and_averages_a_tie():
    # "3", "3.0" and "\boxed{3}" are one answer (as answers.match_answer says); "(B)" and "b" too
    pool = [cand("3", True), cand("3.0", True), cand("\\boxed{4}", False), cand("4", False), cand("", False)]
    assert select(pool, "majority") == 0.5  # 3 and 4 tie with 2 votes each: half the time right
    pool += [cand("\\boxed{3}", True)]
    assert select(pool, "majority") == 1.0
    assert select([cand("(B)", True), cand("b", True), cand("C", False)], "majority") == 1.0
    # no candidate has an answer: nobody votes, a random pick
    assert select([cand(None, False), cand("", True)], "majority") == 0.5


def test_weighted_vote_changes_the_winner():
    pool = [cand("4", False, prm=[0.9, 0.1]), cand("4", False, prm=[0.2]), cand("4", False, prm=[0.8, 0.1]),
            cand("7", True, prm=[0.9, 0.8]), cand("7", True, prm=[0.7, 0.9])]
    assert select(pool, "majority") == 0.0  # three votes for 4
    assert select(pool, "vote:prm:min") == 1.0  # min scores: 4 -> 0.1+0.2+0.1 = 0.4, 7 -> 0.8+0.7 = 1.5
    assert select(pool, "vote:prm:last") == 1.0  # last: 4 -> 0.4, 7 -> 1.7
    assert bon.METHODS["weighted_prm"] == "vote:prm:min"


def test_argmax_ties_count_their_expected_correctness():
    pool = [cand("1", True, orm=0.9), cand("2", False, orm=0.9), cand("3", True, orm=0.5)]
    assert select(pool, "max:orm") == 0.5
    pool[1]["scores"]["orm"] = 0.95
    assert select(pool, "max:orm") == 0.0
    # a candidate without a score is never picked, unless none has one (then: random)
    assert select([cand("1", True), cand("2", False, orm=0.1)], "max:orm") == 0.0
    assert select([cand("1", True), cand("2", False)], "max:orm") == 0.5


def test_prm_max_with_each_aggregation():
    a = cand("1", True, prm=[0.6, 0.6, 0.6])   # min 0.6  mean 0.6  prod 0.216  last 0.6  last2 0.6
    b = cand("2", False, prm=[0.9, 0.5, 0.95])  # min 0.5  mean .783 prod .4275  last .95  last2 0.725
    c = cand("3", False, prm=[0.3, 0.99, 0.7])  # min 0.3  mean .663 prod .2079  last 0.7  last2 0.845

    def winner(pool, rule):  # which candidate the rule picks: the one that scores 1.0 when only it is right
        return [select([dict(c, correct=j == i) for j, c in enumerate(pool)], rule) for i in range(3)].index(1.0)
    picks = {agg: "abc"[winner([a, b, c], f"max:prm:{agg}")] for agg in ("min", "mean", "prod", "last", "last2")}
    assert picks == {"min": "a", "mean": "b", "prod": "b", "last": "b", "last2": "c"}
    assert select([a, b, c], "max:prm:min") == 1.0 and select([a, b, c], "max:prm:mean") == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        select([a], "max:prm")
    with pytest.raises(ValueError, match="bad rule"):
        select([a], "best:prm")


def test_make_pools_matches_null_correctness_and_option_text():
    probs = [{"id": "p", "image": "x.png", "question": "q", "answer": "B", "options": ["12", "15"]},
             {"id": "empty", "image": "x.png", "question": "q", "answer": "1"}]
    cands = [{"id": "a", "problem_id": "p", "steps": ["s"], "answer": "15", "correct": None},
             {"id": "b", "problem_id": "p", "steps": ["s"], "answer": "(B)", "correct": None},
             {"id": "c", "problem_id": "p", "steps": ["s"], "answer": "12", "correct": True}]  # kept as given
    pools = bon.make_pools(probs, cands, {"orm": {"a": 0.25, "c": 0.5}})
    assert list(pools) == ["p"]  # a problem without candidates has no pool
    assert [(c["key"], c["correct"], c["scores"]) for c in pools["p"]] == [
        ("B", True, {"orm": 0.25}), ("B", True, {}), ("A", True, {"orm": 0.5})]


def test_oracle_is_pass_at_n():
    assert select([cand("1", False), cand("2", False), cand("3", True)], "oracle") == 1.0
    assert select([cand("1", False), cand("2", None)], "oracle") == 0.0  # unknown correctness counts as wrong


def test_problem_rows_carry_exact_accuracy_per_n_and_the_meta():
    pools = {"p": [cand("1", True, orm=0.9), cand("2", False, orm=0.5), cand("1", True, orm=0.1)],
             "q": [cand("3", False, orm=0.2), cand("4", True, orm=0.7)]}
    rows = bon.problem_rows(pools, {"orm": "max:orm", "random": "random"}, ns=(1, 2, 3), seed=0,
                            meta={"p": {"family": "text"}, "q": {"family": "visual"}})
    # p, N=2 of 3: {0,1} -> 0.9 right, {0,2} -> 0.9 right, {1,2} -> 0.5 wrong: 2/3; N=3: the 0.9 pick.
    # q has 2 candidates: N=3 (the largest N asked for) is kept as its whole pool, exact: no Monte-Carlo variance.
    assert rows == [
        {"problem": "p", "method": "orm", "family": "text", "acc": {"1": 2 / 3, "2": 2 / 3, "3": 1.0}, "mc_var": {}},
        {"problem": "q", "method": "orm", "family": "visual", "acc": {"1": 0.5, "2": 1.0, "3": 1.0}, "mc_var": {}},
        {"problem": "p", "method": "random", "family": "text", "acc": {"1": 2 / 3, "2": 2 / 3, "3": 2 / 3},
         "mc_var": {}},
        {"problem": "q", "method": "random", "family": "visual", "acc": {"1": 0.5, "2": 0.5, "3": 0.5},
         "mc_var": {}}]


def _pools():
    """Two problems, 16 candidates each, with PRM step scores and ORM scores."""
    pools = {}
    for p in range(2):
        pools[f"p{p}"] = [cand(str(i % (3 + p)), i % (3 + p) == 1, prm=[0.5, ((7 * i + p) % 16) / 16],
                               orm=((5 * i + 3 * p) % 16) / 16) for i in range(16)]
    return pools


def test_accuracy_at_16_is_the_full_pool_selection_and_random_is_exact(monkeypatch):
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # two literal problems: their interval, by hand
    pools, methods = _pools(), {"random": "random", "majority": "majority", "orm": "max:orm",
                                "prm_min": "max:prm:min", "prm_last": "max:prm:last", "oracle": "oracle"}
    res = accuracy_at_n(pools, methods, seed=0)
    for m, rule in methods.items():
        full = [select(pool, rule) for pool in pools.values()]
        assert res[m]["16"]["mean"] == pytest.approx(sum(full) / 2, abs=1e-12) and res[m]["16"]["n"] == 2
        assert res[m]["16"]["lo"] == pytest.approx(min(full)) and res[m]["16"]["hi"] == pytest.approx(max(full))
        assert res[m]["1"]["mean"] == pytest.approx(res["random"]["1"]["mean"], abs=1e-12)  # N=1: any rule is random
    mean_correct = (5 / 16 + 4 / 16) / 2  # p0: 5 of 16 right (i % 3 == 1), p1: 4 (i % 4 == 1)
    assert all(res["random"][n]["mean"] == pytest.approx(mean_correct, abs=1e-12) for n in res["random"])
    assert res["random"]["4"]["lo"] == pytest.approx(4 / 16) and res["random"]["4"]["hi"] == pytest.approx(5 / 16)
    assert res["oracle"]["16"]["mean"] == 1.0 and res["oracle"]["1"]["mean"] < res["oracle"]["4"]["mean"] < 1.0
    # N=4 is exact: the mean over all C(16, 4) subsets of the rule's pick, enumerated here
    for m in ("orm", "prm_min", "majority", "oracle"):
        want = sum(sum(select([pool[i] for i in s], methods[m]) for s in itertools.combinations(range(16), 4)) / 1820
                   for pool in pools.values()) / 2
        assert res[m]["4"]["mean"] == pytest.approx(want, abs=1e-12), m
    assert accuracy_at_n(pools, methods, seed=0) == res  # deterministic
    other = accuracy_at_n(pools, methods, seed=1)  # exact cells do not depend on the seed; a sampled vote does
    assert {m: other[m]["4"]["mean"] for m in methods} == {m: res[m]["4"]["mean"] for m in methods}
    assert other["majority"]["8"]["mean"] != res["majority"]["8"]["mean"]  # C(16, 8) > EXACT_LIMIT: Monte-Carlo
    assert list(accuracy_at_n({"p": pools["p0"][:5]}, {"r": "random"}, ns=(1, 4, 8, 16))["r"]) == ["1", "4", "5"]


def test_vilbench_filter_keeps_problems_where_prms_beat_orms():
    # pools of 2, n=2 (the whole pool). Reward model 1: prm/orm; reward model 2: jprm/jorm.
    a = [cand("1", True, prm=[0.9], orm=0.1, jprm=[0.5], jorm=0.5), cand("2", False, prm=[0.1], orm=0.9,
                                                                              jprm=[0.5], jorm=0.5)]
    b = [cand("1", True, prm=[0.9], orm=0.9, jprm=[0.9], jorm=0.1), cand("2", False, prm=[0.1], orm=0.1,
                                                                              jprm=[0.1], jorm=0.9)]
    c = [cand("1", True, prm=[0.1], orm=0.9, jprm=[0.9], jorm=0.1), cand("2", False, prm=[0.9], orm=0.1,
                                                                              jprm=[0.9], jorm=0.9)]
    pairs = [("max:prm:mean", "max:orm"), ("max:jprm:mean", "max:jorm")]
    kept, gain = vilbench_filter({"a": a, "b": b, "c": c}, pairs, n=2)
    # a: RM1 +1, RM2 0.5-0.5=0 -> 0.5 | b: RM1 0, RM2 +1 -> 0.5 | c: RM1 -1, RM2 0.5-0 -> -0.25
    assert gain == {"a": 0.5, "b": 0.5, "c": -0.25} and kept == ["a", "b"]
    assert vilbench_filter({"a": a, "b": b, "c": c}, pairs[:1], n=2)[0] == ["a"]


def test_table_is_markdown():
    res = {"random": {"1": {"mean": 0.5, "lo": 0.25, "hi": 0.75, "n": 2}, "16": {"mean": None, "lo": None}},
           "oracle": {"1": 0.5, "16": 1.0}}
    assert table(res, ["oracle", "random", "missing"], [1, 16]) == (
        "| method | N=1 | N=16 |\n|---|---:|---:|\n| oracle | 0.500 | 1.000 |\n| random | 0.500 [0.250, 0.750] | - |")
    assert table(res) == table(res, ["random", "oracle"], ["1", "16"])


def test_cli_on_score_files(tmp_path):
    pools = _pools()
    probs = [{"id": pid, "image": "x.png", "question": "q", "answer": "1", "family": f}
             for pid, f in zip(pools, ("text", "visual"))]
    cands = [{"id": f"{pid}-{i}", "problem_id": pid, "steps": ["a", "b"], "answer": c["answer"],
              "correct": c["correct"], "first_error": -1 if c["correct"] else 1} for pid, pool in pools.items()
             for i, c in enumerate(pool)]
    data.write_jsonl(tmp_path / "p.jsonl", probs, "problem")
    data.write_jsonl(tmp_path / "c.jsonl", cands, "candidate")
    data.write_jsonl(tmp_path / "prm.jsonl", [{"candidate_id": f"{pid}-{i}", "scores": c["scores"]["prm"],
                                               "method": "prm"} for pid, pool in pools.items()
                                              for i, c in enumerate(pool)], "score")
    data.write_jsonl(tmp_path / "orm_scores.jsonl", [{"candidate_id": f"{pid}-{i}", "score": c["scores"]["orm"]}
                                                     for pid, pool in pools.items() for i, c in enumerate(pool)],
                     "score")
    out = subprocess.run([sys.executable, str(ROOT / "bon.py"), "--problems", str(tmp_path / "p.jsonl"),
                          "--candidates", str(tmp_path / "c.jsonl"), "--scores", str(tmp_path / "prm.jsonl"),
                          str(tmp_path / "orm_scores.jsonl")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    methods = {"random", "majority", "weighted_prm", "orm_scores", "oracle",
               *(f"prm_{agg}" for agg in bon.AGGREGATIONS)}  # every aggregation of the registry, a fork's too
    assert set(res["bon"]) == {"all", "text", "visual"} and set(res["bon"]["all"]) == methods
    named = [[dict(c, scores={"prm": c["scores"]["prm"], "orm_scores": c["scores"]["orm"]}) for c in pool]
             for pool in pools.values()]  # the ORM file has no "method": its key is the file stem
    full = {m: sum(select(p, r) for p in named) / 2 for m, r in bon.rules_for(
        {"prm": {"x": [0.1]}, "orm_scores": {"x": 0.1}}).items()}
    assert {m: v["16"] for m, v in res["bon"]["all"].items()} == pytest.approx(full)
    # first-error F1: the dev split is a stable hash of the problem id (here p1 chooses the threshold, p0 is
    # measured), the F1 that of metrics.dev_test_f1 on those two parts
    assert [pid for pid in pools if tasks.seed_of(0, "dev", pid) % 1000 < 500] == ["p1"]
    def part(pid):
        return [c["scores"]["prm"] for c in pools[pid]], [-1 if c["correct"] else 1 for c in pools[pid]]
    want = metrics.dev_test_f1(*part("p1"), *part("p0"))
    assert res["step"]["prm"] == pytest.approx(want) and want["dev"] == want["test"] == 16
    assert "| prm_min |" in out.stdout and "first-error F1" in out.stdout


def test_score_keys_from_method_or_file_stem(tmp_path):
    for name, rec in [("jp.jsonl", {"candidate_id": "a", "scores": [0.5], "method": "judge-logits"}),
                      ("jo.jsonl", {"candidate_id": "a", "score": 0.5, "method": "judge-logits"})]:
        data.write_jsonl(tmp_path / name, [rec], "score")
    cands = [{"id": "a", "problem_id": "p", "steps": ["x"], "answer": None, "correct": None}]
    assert bon.load_scores([tmp_path / "jp.jsonl", tmp_path / "jo.jsonl"], cands) == ({
        "judge_logits": {"a": [0.5]}, "jo": {"a": 0.5}}, {})


@pytest.fixture(scope="module")
def mathv_run():
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = bon.main(bon.Args(mathv=str(MATHV), ns="1,2,4,8,16"))
    return res, buf.getvalue()


def test_mathv_model_free(mathv_run):
    res, stdout = mathv_run
    raw = [json.loads(line) for line in open(MATHV / "responses.jsonl", encoding="utf-8")]
    last = json.loads(stdout.strip().splitlines()[-1])
    assert last["problems"] == 304 and last["pool"] == 15
    bo = last["bon"]["all"]
    assert set(bo) == {"random", "majority", "oracle"} and all(list(v) == ["1", "2", "4", "8", "15"]
                                                                 for v in bo.values())
    pool_mean = sum(r["correct"] for r in raw) / len(raw)  # 576 / 4560
    assert all(v == pytest.approx(pool_mean, abs=1e-12) for v in bo["random"].values())
    assert bo["majority"]["1"] == pytest.approx(pool_mean, abs=1e-12) == bo["oracle"]["1"]
    any_right = {r["id"] for r in raw if r["correct"]}
    assert bo["oracle"]["15"] == pytest.approx(len(any_right) / 304, abs=1e-12)
    assert bo["majority"]["15"] == pytest.approx(0.142, abs=5e-4)  # README: "majority vote 0.142 (all 15)"
    # votes merge an option's content with its letter, whose MATH-V labels can disagree: 15 is not above 8
    assert bo["majority"]["2"] < bo["majority"]["4"] < bo["majority"]["8"]
    assert last["label_agreement"] == pytest.approx(4506 / 4560) and last["rejected_labelled_right"] == 0
    assert bo["oracle"]["2"] < bo["oracle"]["4"] < bo["oracle"]["8"] < bo["oracle"]["15"]
    assert "| majority |" in stdout


def best_of(pool):
    """Expected correctness of the argmax of [(score or None, correct)]: ties split evenly, unscored never picked
    (all unscored: a random pick). Written out here as the reference for bon's selection."""
    scored = [(s, c) for s, c in pool if s is not None]
    if not scored:
        return sum(c for _, c in pool) / len(pool)
    top = [c for s, c in scored if s == max(s for s, _ in scored)]
    return sum(top) / len(top)


def test_mathv_with_tiny_init_on_3_problems(capsys, monkeypatch):
    sets = {}  # what bon.score_pool hands to the selection, kept to compare with the reference below
    real = bon.score_pool
    monkeypatch.setattr(bon, "score_pool", lambda *args: sets.update(real(*args)) or sets)
    res = bon.main(bon.Args(mathv=str(MATHV), model="tiny-init", limit=3, ns="1,15", device="cpu"))
    bo = res["bon"]["all"]
    assert res["problems"] == 3 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["problems"] == 3
    assert {"prm_min", "prm_mean", "prm_last2", "weighted_prm", "orm"} <= set(bo)
    # the reference: the same pools scored here with prm.score_steps, each candidate by its own id
    problems, cands = load_mathv(MATHV)
    problems = {p["id"]: p for p in problems[:3]}
    cands = [c for c in cands if c["problem_id"] in problems]
    images = {pid: Image.open(p["image"]).convert("RGB") for pid, p in problems.items()}
    m, proc = prm.load("tiny-init", device="cpu")
    steps, _ = prm.score_steps(m, proc, [images[c["problem_id"]] for c in cands],
                               [problems[c["problem_id"]]["question"] for c in cands], [c["steps"] for c in cands],
                               batch_size=bon.Args().batch_size)
    ref = {c["id"]: s for c, s in zip(cands, steps) if s}
    assert len(cands) == 45 and len(ref) >= 30  # most answers fit in max_len: the comparison below is real
    assert set(sets["prm"]) == set(ref) and all(sets["prm"][k] == pytest.approx(v, abs=1e-6) for k, v in ref.items())
    assert sets["orm"] == pytest.approx({k: v[-1] for k, v in ref.items()}, abs=1e-6)  # no --orm-model: last tag
    # Best-of-15 (the whole pool) by hand from the reference scores
    by = {pid: [(ref.get(c["id"]), float(c["correct"])) for c in cands if c["problem_id"] == pid] for pid in problems}
    agg = {"prm_min": min, "prm_mean": lambda s: sum(s) / len(s), "orm": lambda s: s[-1]}
    want = {k: {pid: best_of([(f(s) if s else None, c) for s, c in pool]) for pid, pool in by.items()}
            for k, f in agg.items()}
    for k in agg:
        assert bo[k]["15"]["mean"] == pytest.approx(sum(want[k].values()) / 3, abs=1e-12), k
    # the ViLBench filter at N=15: the problems where the PRM's mean picks better than the ORM
    kept = [pid for pid in problems if want["prm_mean"][pid] - want["orm"][pid] > 1e-12]
    assert {k: res["filter"][k] for k in ("n", "kept", "of", "pairs")} == {
        "n": 15, "kept": len(kept), "of": 3, "pairs": [("max:prm:mean", "max:orm")]}


def test_faithful_counts_a_pick_only_when_every_step_is_right():
    """A lucky answer (right final answer, a wrong step) is right for accuracy@N and worth nothing for faithful@N."""
    lucky = dict(cand("7", True, prm=[0.9, 0.9]), first_error=0)
    honest = dict(cand("7", True, prm=[0.8, 0.8]), first_error=-1)
    wrong = dict(cand("5", False, prm=[0.1, 0.2]), first_error=1)
    pool = [lucky, honest, wrong]
    assert select(pool, "max:prm:min") == 1.0  # the PRM picks the lucky one: right
    items = bon.prepare(pool, "max:prm:min", target="faithful")
    assert bon.expected(items, "max") == 0.0  # ... but not faithful
    assert bon.expected(bon.prepare(pool, "random", target="faithful"), "random") == pytest.approx(1 / 3)
    assert bon.expected(bon.prepare(pool, "oracle", target="faithful"), "oracle") == 1.0  # the honest one is there
