"""tree_search.py: exact values and binary-search cost on a policy that never recovers, MC and MCTS against the
oracle, the selection score on literals, the budget, kill + resume, the CLI, and the VLM policy."""
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import policy  # noqa: E402
from common import data  # noqa: E402
from common import tasks  # noqa: E402
import tree_search  # noqa: E402

GOLD = [f"right {i}" for i in range(6)]  # the gold chain of the hand-made problem; its answer is "42"
PROB = {"id": "hand", "question": "q", "answer": "42"}


def wrong_from(e, n=len(GOLD)):
    """A solution right before step e, wrong from it on (e = n: all right)."""
    steps = GOLD[:e] + [f"wrong {i}" for i in range(e, n)]
    return {"steps": steps, "answer": "42" if e == n else "7"}


class NeverRecovers:
    """A rollout reaches the answer iff its prefix has no wrong step. From the root it samples solutions whose
    first errors are given. Counts the value estimates it is asked for."""
    def __init__(self, errors=(2, 6, 0, 5)):
        self.errors, self.calls = errors, Counter()

    def rollout(self, problem, prefix, n, seed):
        if not prefix:
            return [wrong_from(e) for e in self.errors][:n]
        self.calls[tuple(prefix)] += 1
        ok = list(prefix) == GOLD[:len(prefix)]
        return [{"steps": GOLD if ok else list(prefix) + ["wrong end"], "answer": "42" if ok else "7"}] * n


def oracle(steps):
    return next((i for i, s in enumerate(steps) if s != GOLD[i]), -1)


def test_mc_values_exact_on_a_policy_that_never_recovers():
    pol = NeverRecovers()
    for e in range(len(GOLD) + 1):
        labels, fe, spent = tree_search.label_mc(PROB, pol, wrong_from(e), k=3, seed=0)
        assert labels == [1.0] * e + [0.0] * (len(GOLD) - e)
        assert fe == (-1 if e == len(GOLD) else e)
        assert spent == 3 * (len(GOLD) - 1)  # every prefix but the whole solution


@pytest.mark.parametrize("n", range(1, 10))
def test_binary_search_finds_the_first_error_in_log2_n_estimates(n):
    for e in range(n):
        steps = ["ok"] * e + ["bad"] * (n - e)
        asked = []

        def value(prefix):
            asked.append(len(prefix))
            return 0.0 if "bad" in prefix else 1.0
        assert tree_search.first_error_search(steps, value) == e
        assert len(asked) <= math.ceil(math.log2(n)), (n, e, asked)
        assert len(asked) <= math.ceil(math.log2(n)) + 1


def test_mc_and_mcts_match_the_oracle_and_mcts_spends_less():
    out = {}
    for method in ("mc", "mcts"):
        pol = NeverRecovers(errors=(2, 6, 0, 5, 3, 6))
        recs, spent, n = tree_search.label_problem(PROB, pol, method, k=4, budget=1000, seed=0, samples=6)
        assert n == 6 and len(recs) == 6
        for r in recs:
            fe = oracle(r["completions"])
            assert r["first_error"] == fe
            assert r["labels"] == [1.0 if fe == -1 or i < fe else 0.0 for i in range(len(GOLD))]
            assert r["meta"]["correct"] == (fe == -1)
        out[method] = (recs, spent, pol.calls)
    assert [r["labels"] for r in out["mc"][0]] == [r["labels"] for r in out["mcts"][0]]
    assert out["mc"][1] == 6 * 5 * 4  # 6 solutions x 5 prefixes x K
    # mcts: no estimate for a right solution, each prefix estimated once (the cache), <= ceil(log2 6) per search
    assert max(out["mcts"][2].values()) == 1 and out["mcts"][1] <= 4 * 3 * 4 and out["mcts"][1] < out["mc"][1] / 3
    rec = {r["first_error"]: r["meta"]["rollouts"] for r in out["mcts"][0]}
    assert rec[-1] == 0


def test_mcts_respects_the_budget():
    pol = NeverRecovers(errors=(2, 0, 5, 3))
    res, spent = tree_search.label_mcts(PROB, pol, [wrong_from(e) for e in pol.errors], k=4, budget=12, seed=0)
    assert spent <= 12 and sum(pol.calls.values()) == spent // 4
    assert 0 < len(res) < 4  # some searches fit, the rest are left unlabelled, not guessed
    for j, (_, fe, _) in res.items():
        assert fe == pol.errors[j]


def test_select_score_literal():
    cache, visits = {(): 0.5}, Counter()
    key, state = tree_search.select_score(["a", "b"], cache, visits)
    assert state == () and key == (True, pytest.approx(0.5 ** 0.5 * 0.9 ** (2 / 8)))
    short, _ = tree_search.select_score(["a", "b"], cache, visits)
    long, _ = tree_search.select_score(["a", "b", "c", "d"], cache, visits)
    assert short > long  # beta < 1: a shorter rollout is searched first
    cache[("a",)] = 0.75  # "a" is known right: the state moves down to it
    visits[()] = 3
    key, state = tree_search.select_score(["a", "b", "c"], cache, visits)
    assert state == ("a",)
    assert key[1] == pytest.approx(0.5 ** 0.25 * 0.9 ** (2 / 8) + 0.125 * math.sqrt(3) / 1)
    cache2 = {(): 0.0}  # a root where every sample failed: after every pair with 0 < MC < 1
    assert tree_search.select_score(["a", "b"], cache2, Counter())[0] < (True, 0.0)


def test_synthetic_policy_is_deterministic():
    p = tasks.make_problems(1, 0)[0]
    pol = policy.SyntheticPolicy()
    a, b = pol.rollout(p, [], 5, 7), pol.rollout(p, [], 5, 7)
    assert a == b and a != pol.rollout(p, [], 5, 8)
    cont = pol.rollout(p, a[0]["steps"][:1], 3, 7)
    assert all(c["steps"][0] == a[0]["steps"][0] for c in cont)


def test_eval_meets_the_target_and_tau_zero_does_not():
    res = tree_search.evaluate(n_problems=300, seed=0)
    assert res["mcts"]["first_error_agreement"] >= 0.90
    assert res["mcts"]["rollouts_per_solution"] <= res["mc"]["rollouts_per_solution"] / 3
    assert 0.9 <= res["mc"]["step_label_accuracy"] <= 1 and 0.9 <= res["mcts"]["step_label_accuracy"] <= 1
    luck = tree_search.evaluate(n_problems=300, seed=0, tau=0.0)  # Math-Shepherd's > 0: lucky rollouts mark wrong steps right
    assert luck["mcts"]["first_error_agreement"] < res["mcts"]["first_error_agreement"] - 0.1


def run_main(out, **kw):
    return tree_search.main(tree_search.Args(**{"policy": "synthetic", "method": "mcts", "n_problems": 6, "rollouts": 4,
                              "out": str(out), **kw}))


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    run_main(tmp_path / "full" / "l.jsonl")
    full = data.read_jsonl(tmp_path / "full" / "l.jsonl", "labelled")
    assert len(full) == 24 and len({r["id"] for r in full}) == 24

    out = tmp_path / "killed" / "l.jsonl"
    real, n = data.append_jsonl, Counter()

    def dies(path, record, kind=None):  # the kill: after 10 records, mid-way through the 3rd problem
        if n["x"] == 10:
            raise KeyboardInterrupt
        n["x"] += 1
        real(path, record, kind)
    monkeypatch.setattr(data, "append_jsonl", dies)
    with pytest.raises(KeyboardInterrupt):
        run_main(out)
    monkeypatch.setattr(data, "append_jsonl", real)
    with open(out, "a") as f:  # and a line the kill cut in half
        f.write('{"id": "train-00002-mcts03", "images": ["ima')
    assert data.finished(out) == {"train-00000": 4, "train-00001": 4}
    with pytest.raises(ValueError):  # no silent overwrite
        run_main(out)
    res = run_main(out, resume=True)
    assert res["kept"] == 8 and res["records"] == 16
    again = data.read_jsonl(out, "labelled")
    assert [r["id"] for r in again] == [r["id"] for r in full]
    assert again == full  # same labels, same meta, same image paths
    assert (out.parent / "l.jsonl.done").read_text().splitlines() == [f"train-{i:05d} 4" for i in range(6)]


def test_resume_redoes_a_finished_problem_with_a_bad_line_and_refuses_to_mix_runs(tmp_path, capsys):
    out = tmp_path / "run" / "l.jsonl"
    run_main(out)
    full = out.read_text().splitlines()
    # a corrupt line inside finished problem train-00003 (its 2nd record): that problem is redone, and said
    lines = list(full)
    lines[13] = lines[13][:40]
    out.write_text("\n".join(lines) + "\n")
    res = run_main(out, resume=True)
    assert res["kept"] == 20 and res["records"] == 4
    said = capsys.readouterr().out
    assert "redoing 1 finished problems" in said and "train-00003" in said and f"{out}:14" in said
    assert out.read_text().splitlines() == full[:12] + full[16:] + full[12:16]  # train-00003 again, at the end
    assert sorted(out.read_text().splitlines()) == sorted(full)
    # --resume with another setting: refused, nothing written
    before = out.read_text()
    for kw in ({"seed": 1}, {"method": "mc"}, {"rollouts": 8}):
        with pytest.raises(ValueError, match="other settings"):
            run_main(out, resume=True, **kw)
    assert out.read_text() == before
    # an OUT.done without its OUT: an error, not "everything is done"
    out.unlink()
    with pytest.raises(ValueError, match="is missing: their labels are lost"):
        run_main(out, resume=True)


def test_images_of_other_runs_cannot_overwrite_each_other(tmp_path):
    a, b = tmp_path / "d" / "seed0.jsonl", tmp_path / "d" / "seed1.jsonl"
    run_main(a, seed=0)
    run_main(b, seed=1)  # the same ids (train-00000 ...), other problems, one images/ folder
    for out, seed in ((a, 0), (b, 1)):
        probs = {p["id"]: p for p in tasks.make_problems(6, seed, "train")}
        for r in data.read_jsonl(out, "labelled"):
            img = Image.open(out.parent / r["images"][0]).convert("RGB")
            assert img.tobytes() == tasks.render(probs[r["meta"]["problem_id"]]).tobytes()


def test_cli_writes_valid_records(tmp_path):
    out = tmp_path / "ts" / "labels.jsonl"
    res = subprocess.run([sys.executable, str(ROOT / "tree_search.py"), "--policy", "synthetic", "--method", "mcts",
                          "--n-problems", "20", "--rollouts", "8", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "rollouts" in res.stdout.splitlines()[-1] and "records 80" in res.stdout.splitlines()[-1]
    recs = data.read_jsonl(out, "labelled")
    data.check_images(out, recs)
    assert len(recs) == 80 and all(0 <= x <= 1 for r in recs for x in r["labels"])
    assert {r["meta"]["method"] for r in recs} == {"mcts"} and any(r["first_error"] >= 0 for r in recs)
    assert any(0 < x < 1 for r in recs for x in r["labels"])  # soft values, not only 0/1


def vlm_run(tmp_path, policy, method):
    out = tmp_path / policy / "l.jsonl"
    res = tree_search.main(tree_search.Args(policy=policy, method=method, n_problems=1, rollouts=2, budget=4, samples=2,
                          max_new_tokens=24, out=str(out)))
    recs = data.read_jsonl(out, "labelled")
    data.check_images(out, recs)
    assert all(len(r["labels"]) == len(r["completions"]) >= 1 for r in recs)
    assert res["records"] == len(recs) and res["rollouts"] <= 4
    return recs


def test_vlm_policy_tiny_init_writes_valid_records(tmp_path):
    pol = policy.VLMPolicy("tiny-init", max_new_tokens=24, batch_size=2, device="cpu")
    p = tasks.make_problems(1, 0)[0]
    rs = pol.rollout(p, ["There are 3 red shapes."], 3, seed=1)
    assert len(rs) == 3 and all(r["steps"][0] == "There are 3 red shapes." for r in rs)
    assert rs == pol.rollout(p, ["There are 3 red shapes."], 3, seed=1)  # seeded sampling
    vlm_run(tmp_path, "tiny-init", "mcts")


@pytest.mark.skipif(not (ROOT / "checkpoints" / "tiny-base" / "config.json").exists(),
                    reason="checkpoints/tiny-base not made yet")
def test_vlm_policy_tiny_base(tmp_path):
    recs = vlm_run(tmp_path, "tiny", "mcts")
    assert recs and all(r["meta"]["problem_id"] == "train-00000" for r in recs)


def test_label_rounds_gives_label_mcts_records_batched():
    """The batched rounds (bench's on-policy labelling) are the per-problem binary search, record for record: the
    same prefixes estimated with the same rollouts (synthetic policy: deterministic per prefix), the same labels."""
    probs = tasks.make_problems(80, 3, "train")
    pol = policy.SyntheticPolicy()
    calls = []
    many = pol.rollout_many
    pol.rollout_many = lambda reqs: calls.append(len(reqs)) or many(reqs)
    for tau in (0.0, 0.2):
        ref, st_ref = tree_search.label(probs, policy.SyntheticPolicy(), "mcts", 8, 0, 3, 4, tau)
        got, st = tree_search.label_rounds(probs, pol, 8, 3, 4, tau)
        assert got == ref and st["rollouts"] == st_ref["rollouts"] and st["solutions"] == 320
        assert any(r["first_error"] != -1 for r in got) and any(r["first_error"] == -1 for r in got)
    assert max(calls) > 20 and len(calls) <= 2 * 5  # many prefixes per call; a few rounds (log2 of the steps) each


def test_vlm_rollout_many_groups_and_keeps_each_prefix():
    pol = policy.VLMPolicy("tiny-init", max_new_tokens=16, device="cpu")
    p, q = tasks.make_problems(2, 0)
    reqs = [(p, [], 2, 5), (q, ["There are 3 red shapes."], 3, 5), (p, ["x"], 1, 6)]
    out = pol.rollout_many(reqs, rows=4)  # two generate calls, a request split across them
    assert [len(o) for o in out] == [2, 3, 1]
    assert all(r["steps"][0] == "There are 3 red shapes." for r in out[1]) and out[2][0]["steps"][0] == "x"
    assert pol.rollout_many(reqs, rows=4) == out  # seeded


def test_a_real_kill_then_resume_gives_the_uninterrupted_output(tmp_path):
    """SIGKILL the CLI mid-run (after some problems are finished), --resume: the same bytes as a run never killed."""
    import os
    import signal
    import time
    cmd = lambda out, *x: [sys.executable, str(ROOT / "tree_search.py"), "--policy", "synthetic", "--method", "mc",  # noqa: E731
                           "--n-problems", "300", "--rollouts", "16", "--out", str(out), *x]
    full = tmp_path / "full" / "l.jsonl"
    assert subprocess.run(cmd(full), cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "killed" / "l.jsonl"
    proc = subprocess.Popen(cmd(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = Path(str(out) + ".done")
    t0 = time.time()
    while (not done.exists() or len(done.read_text().splitlines()) < 20) and time.time() - t0 < 120:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(done.read_text().splitlines())
    assert 20 <= n_done < 300  # killed mid-run
    res = subprocess.run(cmd(out, "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == full.read_bytes()
    assert done.read_text() == Path(str(full) + ".done").read_text()


def test_binary_search_as_a_generator_asks_each_prefix_it_needs_in_turn():
    """The same search first_error_search drives: it yields a prefix, takes its value, returns the first error."""
    steps = ["a", "b", "c", "d", "e"]
    truth = 3  # prefixes up to step 2 are right (value 1), from step 3 on wrong (value 0)
    search = tree_search.binary_search(steps, tau=0.2)
    asked, prefix = [], next(search)
    try:
        while True:
            asked.append(prefix)
            prefix = search.send(1.0 if len(prefix) <= truth else 0.0)
    except StopIteration as done:
        found = done.value
    assert found == truth and asked == [steps[:3], steps[:4]]  # mid 2 (right), then mid 3 (wrong): lo = hi = 3
    assert tree_search.first_error_search(steps, lambda p: 1.0 if len(p) <= truth else 0.0) == truth


def test_hard_labels_follow_the_first_error_or_the_value_against_tau():
    mcts = {"labels": [0.9, 0.4, 0.0, 0.0], "first_error": 2, "meta": {"method": "mcts"}}
    assert tree_search.hard_labels(mcts) == [1.0, 1.0, 0.0, 0.0]  # right before the first error, whatever the value
    mc = {"labels": [0.9, 0.1, 0.5, 0.0], "first_error": 1, "meta": {"method": "mc"}}
    assert tree_search.hard_labels(mc, tau=0.2) == [1.0, 0.0, 1.0, 0.0]  # each value against tau
    right = {"labels": [0.7, 1.0], "first_error": -1, "meta": {"method": "oracle"}}
    assert tree_search.hard_labels(right) == [1.0, 1.0]


@pytest.mark.parametrize("name", list(tree_search.LABELLERS))
def test_every_labeller_writes_valid_records_of_the_sampled_solutions(name):
    """Each member of the registry: one valid labelled record per sampled solution with steps, soft labels in
    [0, 1], and for the synthetic policy a first error that is the oracle's or one a search found."""
    probs = [dict(p, image=f"images/{p['id']}.png") for p in tasks.make_problems(6, 0, "train")]
    recs, stats = tree_search.LABELLERS[name](probs, policy.SyntheticPolicy(), 8, 0, 3, 0.2, False)
    assert len(recs) == stats["records"] == 6 * 3
    by_id = {p["id"]: p for p in probs}
    for r in recs:
        data.validate(r, "labelled")
        assert r["meta"]["problem_id"] in by_id and len(r["labels"]) == len(r["completions"])
    if name == "oracle":
        assert all(r["first_error"] == tasks.first_error(by_id[r["meta"]["problem_id"]], r["completions"])
                   for r in recs)


def test_hard_labels_flag_writes_ones_and_zeros_and_is_part_of_the_run(tmp_path):
    a = tree_search.Args(n_problems=3, rollouts=4, samples=2, out=str(tmp_path / "l.jsonl"), hard_labels=True)
    tree_search.main(a)
    recs = data.read_jsonl(a.out, "labelled")
    assert recs and all(set(r["labels"]) <= {0.0, 1.0} for r in recs)
    assert all(r["labels"] == tree_search.hard_labels(r, a.tau) for r in recs)
    soft = tree_search.Args(**{**a.__dict__, "hard_labels": False, "resume": True})
    with pytest.raises(ValueError, match="other settings"):  # --resume of the same OUT with soft labels: refused
        tree_search.main(soft)


def _record(pid, steps, first_error, correct, method="mcts"):
    labels = [1.0 if first_error == -1 or i < first_error else 0.0 for i in range(len(steps))]
    return {"id": f"{pid}-{len(steps)}-{first_error}", "completions": steps, "labels": labels,
            "first_error": first_error, "meta": {"problem_id": pid, "correct": correct, "method": method}}


def test_label_quality_puts_lucky_solutions_apart():
    prob = tasks.make_problem("lq", 0, kind="count_add")
    gold = [s for s, _, _ in tasks.gold_steps(prob)]
    swapped = ["Step 1: wrong count 99"] + gold[1:]  # a wrong first step that still ends on the right answer
    records = [_record("lq", gold, -1, True),  # right, labelled right
               _record("lq", swapped, -1, True),  # lucky: the labels call it right, the oracle step 1 wrong
               _record("lq", swapped, 0, True)]  # lucky, and labelled as the oracle does
    q = tree_search.label_quality({"lq": prob}, records, tau=0.5)
    assert (q["all"]["records"], q["lucky"]["records"], q["rest"]["records"]) == (3, 2, 1)
    assert q["lucky"]["first_error_agreement"] == 0.5 and q["rest"]["first_error_agreement"] == 1.0
    assert q["lucky"]["step_label_accuracy"] == 0.5  # the first record's 4 steps wrong, the second's right


def test_consensus_keeps_the_solutions_whose_likelihood_agrees_on_the_first_error():
    records = [_record("p", ["a", "b", "c"], -1, True), _record("p", ["a", "b", "c"], 1, False),
               _record("p", ["a", "b", "c"], -1, True), _record("p", ["a", "b", "c"], 0, False),
               _record("q", ["a", "b", "c"], 1, False)]
    likelihoods = [[0.9, 0.9, 0.9],  # agrees: no step below the threshold
                   [0.9, 0.1, 0.8],  # agrees: step 2 is the first below it
                   [0.05, 0.9, 0.9],  # a "right" solution the base finds unlikely at step 1: dropped
                   None,  # not scored: dropped
                   [0.9, 0.3, 0.9]]  # agrees when the threshold is above 0.3
    for i, r in enumerate(records):
        r["id"] = f"r{i}"
    kept, stats = tree_search.consensus(records, likelihoods)
    assert [r["id"] for r in kept] == [records[i]["id"] for i in (0, 1, 4)]
    assert stats["kept"] == 3 and stats["of"] == 5 and 0.3 < stats["threshold"] <= 0.9
