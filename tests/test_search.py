"""search.py: the beam's bookkeeping on literal scores (a scorer that prefers a known branch ends on it; a
finished solution stays), the token and scored counts, b = N and k = 1 with a final-answer scorer is
Best-of-N's pick, Best-of-N at a fractional N, determinism, kill + resume, every scorer batch-independent, one
more step of the tiny base and of a served policy, and the command line."""
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import bon
import policy
import prm
import search
from common import data, tasks
from common.model import load
from common.tiny import tiny_tokenizer
from lab import api, serve

ROOT = Path(__file__).resolve().parents[1]
PROB = {"id": "hand", "question": "q", "answer": "7"}


def count_words(text):
    return len(text.split())


class Tree:
    """A policy whose steps name their place in a tree: proposal j of the r-th request of a call at depth d
    is "d.r.j" (shared=True: "d.j", the same from every beam); a prefix of `depth` steps is finished, or one
    ending in a step of `early`. The seed changes nothing, so the scorer alone decides where the search goes.
    Its text: the step and "next" (two words) unless it ends the solution."""

    def __init__(self, depth=3, early=(), shared=False):
        self.depth, self.early, self.shared, self.asked = depth, set(early), shared, Counter()

    def next_steps(self, requests):
        out = []
        for r, (problem, prefix, n, seed) in enumerate(requests):
            self.asked[len(prefix)] += n
            props = []
            for j in range(n):
                steps = list(prefix) + [f"{len(prefix)}.{j}" if self.shared else f"{len(prefix)}.{r}.{j}"]
                done = len(steps) == self.depth or steps[-1] in self.early
                props.append({"steps": steps, "answer": steps[-1], "done": done,
                              "text": steps[-1] + ("" if done else " next")})
            out.append(props)
        return out


def literal(scores):
    """A scorer reading a dict {last step: score} (0 for any other)."""
    def score(items):
        return [scores.get(steps[-1], 0.0) for _, steps in items]
    return score


def test_greedy_follows_the_branch_the_scorer_prefers():
    scores = {"0.0.2": 0.9, "1.0.0": 0.8, "2.0.1": 0.7}
    found = search.search([PROB], Tree(), literal(scores), k=3, b=1, seed=0, count_tokens=count_words)
    best = found["hand"]["beams"][0]
    assert best["steps"] == ["0.0.2", "1.0.0", "2.0.1"] and best["done"] and best["score"] == 0.7


def test_a_wider_beam_escapes_the_greedy_trap():
    # "0.0.0" looks best after one step but its continuations score 0.1; those of "0.1.0" (second best) 0.95
    def score(items):
        return [{"0.0.0": 0.9, "0.1.0": 0.8}.get(steps[-1], 0.95 if steps[0] == "0.1.0" else 0.1)
                for _, steps in items]
    greedy = search.search([PROB], Tree(depth=2), score, k=2, b=1, seed=0, count_tokens=count_words)
    wide = search.search([PROB], Tree(depth=2), score, k=2, b=2, seed=0, count_tokens=count_words)
    assert greedy["hand"]["beams"][0]["steps"][0] == "0.0.0" and greedy["hand"]["beams"][0]["score"] == 0.1
    assert wide["hand"]["beams"][0]["steps"][0] == "0.1.0" and wide["hand"]["beams"][0]["score"] == 0.95


def test_a_finished_solution_stays_until_beaten():
    # "0.0.0" ends the solution at once with 0.6; "0.0.1" goes on at 0.5, then ends at 0.55: "0.0.0" stays
    pol = Tree(depth=2, early=["0.0.0"])
    found = search.search([PROB], pol, literal({"0.0.0": 0.6, "0.0.1": 0.5, "1.0.0": 0.55}), k=2, b=2, seed=0,
                          count_tokens=count_words)
    beams = found["hand"]["beams"]
    assert [b["steps"] for b in beams] == [["0.0.0"], ["0.0.1", "1.0.0"]] and all(b["done"] for b in beams)
    assert pol.asked == {0: 4, 1: 2}  # round two: only the unfinished beam asked (k = 2)


def test_tokens_count_every_proposal_and_scored_counts_distinct_prefixes():
    for shared in (False, True):
        found = search.search([PROB], Tree(shared=shared), literal({}), k=3, b=2, seed=0,
                              count_tokens=count_words)
        # rounds 1 and 2: 2 beams x 3 proposals of 2 words; round 3: 6 proposals of 1 word (the last steps)
        assert found["hand"]["tokens"] == 6 * 2 + 6 * 2 + 6 * 1
        # shared: the two empty beams propose the same 3 first steps (3 distinct partial solutions, not 6);
        # the two kept (ties: the earlier proposals, "0.0" and "0.1") differ, so 6 distinct in later rounds
        assert found["hand"]["scored"] == (3 + 6 + 6 if shared else 18)


def test_b_n_k_1_with_a_final_answer_scorer_is_best_of_n():
    problems = tasks.make_problems(8, 0, "test")
    count = search.token_counter(tiny_tokenizer())

    def by_answer(items):  # a final-answer scorer: the answer alone, a fixed draw per answer
        return [random.Random(f"{p['id']}|{bon.answer_key(policy.extract_answer(s))}").random()
                for p, s in items]
    n = 6
    found = search.search(problems, policy.SyntheticPolicy(), by_answer, k=1, b=n, seed=3, count_tokens=count)
    for p in problems:
        beams = found[p["id"]]["beams"]
        assert len(beams) == n and all(b["done"] for b in beams)  # k = 1, b = N: nothing is ever dropped
        pool = [{"answer": b["answer"], "correct": search.outcome(p, b["steps"], b["answer"])["correct"],
                 "scores": {"orm": b["score"]}} for b in beams]
        picked = search.outcome(p, beams[0]["steps"], beams[0]["answer"])["correct"]
        assert bon.select(pool, "max:orm") == picked
        whole = [{"steps": b["steps"]} for b in beams]  # and it costs what N whole answers cost
        assert found[p["id"]]["tokens"] == sum(count(search.written(s)) for s in whole)


def test_best_of_n_at_a_fractional_n_mixes_the_two_whole_n():
    pool = [{"answer": str(i), "correct": i == 0, "first_error": -1, "scores": {"orm": 1.0 - i / 10}}
            for i in range(4)]  # the best-scored answer is the right one
    base = search.Baselines({"x": pool})
    at = [base.at_n("x", "max:orm", n, "correct") for n in (1, 2, 3, 4)]
    assert at == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert base.at_tokens("x", "max:orm", 2.25, "correct") == pytest.approx(0.75 * 0.5 + 0.25 * 0.75)
    assert base.at_tokens("x", "max:orm", 0.4, "correct") == pytest.approx(0.25)  # below one answer: N = 1
    assert base.at_tokens("x", "max:orm", 9.0, "correct") == pytest.approx(1.0)  # past the pool: the pool


def test_compare_pairs_two_searches_problem_by_problem():
    def right(method, i):  # PRM-guided: right on every second problem; ORM-guided: on every fourth
        return i % (2 if method == "prm b=2" else 4) == 0
    rows = [{"problem": f"p{i}", "content": f"c{i}", "method": m, "correct": right(m, i),
             "first_error": -1 if right(m, i) else 0} for i in range(40) for m in ("prm b=2", "orm b=2")]
    diff = search.compare(rows, "prm b=2", "orm b=2")
    assert diff["mean"] == pytest.approx(0.5 - 0.25) and diff["n"] == 40 and diff["lo"] <= 0.25 <= diff["hi"]
    assert search.compare(rows, "prm b=2", "orm b=2", "faithful")["mean"] == pytest.approx(0.25)


def test_the_oracle_on_partial_solutions():
    p = tasks.make_problems(1, 0, "test")[0]
    gold = [text for text, _, _ in tasks.gold_steps(p)]
    assert all(search.right_so_far(p, gold[:i]) for i in range(len(gold) + 1))
    assert not search.right_so_far(p, gold[:1] + ["There are 99 red shapes."])
    assert not search.right_so_far(p, gold + ["one more"])


def test_read_step_literals():
    step = policy.read_step("There are 3 red shapes.\nStep 2: ", [])
    assert step["steps"] == ["There are 3 red shapes."] and not step["done"]
    last = policy.read_step("The answer is 5.", ["3 + 2 = 5."])
    assert last["steps"] == ["3 + 2 = 5.", "The answer is 5."] and last["done"] and last["answer"] == "5"
    assert policy.step_marker(3) == "\nStep 3: "


def test_same_seed_same_beams_other_seed_other_beams():
    problems = tasks.make_problems(6, 0, "test")
    readers = search.Readers(seed=0)

    def once(seed):
        scorer = search.Cached("random", readers)
        return search.search_rows(problems, policy.SyntheticPolicy(), scorer, 3, [2], seed, count_words)
    assert once(0) == once(0)
    assert [r["steps"] for r in once(0)] != [r["steps"] for r in once(1)]


@pytest.fixture(scope="module")
def base():
    return load("tiny", device="cpu")


@pytest.mark.parametrize("name", list(search.SCORERS))
def test_every_scorer_scores_a_partial_solution_the_same_alone_and_in_a_batch(name, base):
    problems = tasks.make_problems(3, 0, "test")
    items = [(p, [text for text, _, _ in tasks.gold_steps(p)][:i]) for p in problems for i in (1, 2, 3)]
    items.append((problems[0], ["There are 9 red shapes."]))
    for trained in (None, prm.load("tiny", device="cpu")):  # the base's fallback, and a model read as a PRM
        readers = search.Readers(base=base, prm=trained, orm=trained, agg="min", seed=0)
        batch = search.Cached(name, readers)(items)
        assert len(batch) == len(items) and all(isinstance(v, float) and v > -1e9 for v in batch)
        assert [search.Cached(name, readers)([item])[0] for item in items] == batch
        assert len(set(batch)) > 1  # it tells partial solutions apart


def test_one_more_step_of_the_tiny_base_is_the_first_step_of_its_rollout():
    pol = policy.VLMPolicy("tiny", temperature=1.0, max_new_tokens=96, batch_size=16)
    problems = tasks.make_problems(3, 0, "test")
    requests = [(p, pre, 3, 5) for p in problems for pre in ([], [tasks.gold_steps(p)[0][0]])]
    steps, whole = pol.next_steps(requests), pol.rollout_many(requests)
    count = search.token_counter(pol.processor.tokenizer)
    for (_, pre, _, _), ones, rollouts in zip(requests, steps, whole):
        for one, rollout in zip(ones, rollouts):
            k = len(pre)
            assert one["steps"] == rollout["steps"][:k + 1]
            assert one["done"] == (len(rollout["steps"]) == k + 1)
            assert one["done"] or one["text"].endswith(policy.step_marker(k + 2))
            assert rollout["text"].startswith(one["text"]) and count(one["text"]) < count(rollout["text"]) + 1


def test_one_more_step_through_the_api_equals_the_local_policy(tmp_path):
    server = serve.start("tiny")
    try:
        # the command line of a served search, end to end
        res = api.main(["search", "--policy", server.url, "--scorers", "oracle", "--k", "2", "--b", "1",
                        "--pool", "2", "--n-problems", "2", "--prm", "none", "--orm", "none",
                        "--out", str(tmp_path / "s"), "--timeout", "120"])
        assert res["problems"] == 2 and res["search"]["oracle b=1"]["tokens"] > 0
        problems = tasks.make_problems(2, 0, "test")
        requests = [(p, pre, 2, 0) for p in problems for pre in ([], [tasks.gold_steps(p)[0][0]])]
        served = api.ServedPolicy(server.url, 0.0, 64).next_steps(requests)
        local = policy.VLMPolicy("tiny", 0.0, 64).next_steps(requests)
        assert served == local and not any(s["done"] for ss in local for s in ss)
        client = api.Client(server.url, retries=0)
        body = client.body(api.messages(tasks.render(problems[0]), "q"), stop=[1])
        with pytest.raises(ValueError, match="stop: expected a string or a list of strings"):
            client.post(body)
    finally:
        server.shutdown()


def test_cut_at_stop_literals():
    assert serve.cut_at_stop("a\nStep 2: b", ("\nStep 2: ",)) == ("a", "\nStep 2: ")
    assert serve.cut_at_stop("abc", ("x", "y")) == ("abc", None)
    assert serve.cut_at_stop("a x y", ("y", "x")) == ("a ", "x")


def run_main(out, **kw):
    a = search.Args(policy="synthetic", scorers="oracle,random", prm="none", orm="none", k=2, b="1,2", pool=4,
                    n_problems=6, chunk=2, out=str(out), **kw)
    return search.main(a)


def test_kill_and_resume_loses_and_duplicates_nothing_and_refuses_other_settings(tmp_path, monkeypatch):
    run_main(tmp_path / "full")
    full = data.read_jsonl(tmp_path / "full" / "rows.jsonl")
    assert len(full) == 6 * (1 + 2 * 2)  # per problem: its pool, 2 scorers x 2 widths

    real, n = data.append_jsonl, Counter()

    def dies(path, record, kind=None):  # the kill: mid-way through the second chunk's rows
        if n["x"] == 14:
            raise KeyboardInterrupt
        n["x"] += 1
        real(path, record, kind)
    monkeypatch.setattr(data, "append_jsonl", dies)
    with pytest.raises(KeyboardInterrupt):
        run_main(tmp_path / "cut")
    monkeypatch.setattr(data, "append_jsonl", real)
    with pytest.raises(ValueError, match="exists"):
        run_main(tmp_path / "cut")
    with pytest.raises(ValueError, match="other settings"):
        run_main(tmp_path / "cut", resume=True, seed=1)
    res = run_main(tmp_path / "cut", resume=True)
    again = data.read_jsonl(tmp_path / "cut" / "rows.jsonl")
    key = json.dumps
    assert sorted(map(key, again)) == sorted(map(key, full))  # the same rows, none twice
    assert res["search"]["oracle b=2"]["correct"]["mean"] == 1.0


def test_help_explains_the_knobs_and_bad_values_are_refused():
    out = subprocess.run([sys.executable, "search.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--k", "--b", "--scorers", "--policy", "greedy", "oracle"):
        assert flag in out.stdout
    bad = subprocess.run([sys.executable, "search.py", "--k", "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--k" in bad.stderr
    bad = subprocess.run([sys.executable, "search.py", "--scorers", "prm,magic", "--out", "/nonexistent/x"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "error: --scorers 'magic'" in bad.stderr
