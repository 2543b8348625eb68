"""prm.py / orm.py: single-pass scoring equals per-prefix scoring, the tag head reads two rows of the LM head, the
implicit head is sigmoid(beta * cumulative log-likelihood ratio) computed here by hand, the ORM is the last tag's
score, and the CLIs end to end against in-process scores."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from common import pictures
import policy
from common import data
from common import model as vlm
import orm
import prm
from common import tasks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return prm.load("tiny-init", device="cpu")


def test_single_pass_equals_per_prefix(tiny):
    m, p = tiny
    probs = tasks.make_problems(4, seed=5)
    ims, qs = [tasks.render(x) for x in probs], [x["question"] for x in probs]
    steps = [policy.candidates(x, 1, seed=5)[0]["steps"] for x in probs]
    single, skipped = prm.score_steps(m, p, ims, qs, steps, batch_size=4)  # padded batch of 4
    assert skipped == []
    for i in range(4):
        ref = prm.score_prefixes(m, p, ims[i], qs[i], steps[i])
        assert len(single[i]) == len(steps[i])
        assert max(abs(a - b) for a, b in zip(single[i], ref)) <= 1e-4


def test_answers_without_steps_are_skipped_and_said(tiny):
    m, p = tiny
    pr = tasks.make_problem("z", 0)
    gold = [s for s, _, _ in tasks.gold_steps(pr)]
    scores, skipped = prm.score_steps(m, p, [tasks.render(pr)] * 3, [pr["question"]] * 3, [gold, [], gold[:1]],
                                      batch_size=2)
    assert skipped == [(1, "no steps")] and scores[1] is None
    assert scores[2] == pytest.approx(scores[0][:1], abs=1e-5)  # a prefix scores as it does inside the answer


def test_tag_logits_use_two_rows_only(tiny):
    m, p = tiny
    pr = tasks.make_problem("z", 0)
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    batch, _, _ = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [steps])
    ids = vlm.token_ids(p)
    with torch.no_grad():
        full = m(**{k: batch[k] for k in vlm.MODEL_KEYS if k in batch}).logits[0]
        mine = prm.step_logits(m, batch, ids)
    tags = (batch["input_ids"][0] == ids["tag"]).nonzero()[:, 0]
    assert len(tags) == len(steps)
    assert torch.allclose(mine, full[tags][:, [ids["pos"], ids["neg"]]], atol=1e-5)


def test_implicit_scores_are_the_sigmoid_of_the_cumulative_log_ratio():
    """score_steps with the implicit head = sigmoid(beta * sum over the answer's tokens so far of log pi - log
    pi_ref), computed here per answer from token_logprobs of the model and of its reference, read at the tags."""
    m, p = prm.load("tiny-init", device="cpu")
    beta, ids = 0.5, vlm.token_ids(p)
    prm.make_implicit(m, "tiny-init", beta, "cpu")
    with torch.no_grad():
        m.model.language_model.layers[0].mlp.down_proj.weight.add_(0.05)  # move it away from its reference
    probs = [tasks.make_problem("a", 0, kind="shop_total"), tasks.make_problem("b", 0, kind="count_add")]
    ims, qs = [tasks.render(x) for x in probs], [x["question"] for x in probs]
    steps = [[s for s, _, _ in tasks.gold_steps(x)] for x in probs]
    got, _ = prm.score_steps(m, p, ims, qs, steps, batch_size=2)
    for i in range(2):
        batch, _, _ = prm.encode_steps(p, ims[i:i + 1], qs[i:i + 1], steps[i:i + 1])
        with torch.no_grad():
            r = vlm.token_logprobs(m, batch, ids)[0] - vlm.token_logprobs(m.implicit[0], batch, ids)[0]
        tags = (batch["input_ids"][0] == ids["tag"]).nonzero()[:, 0].tolist()
        want = [torch.sigmoid(beta * r[:t + 1].sum()).item() for t in tags]
        assert got[i] == pytest.approx(want, abs=1e-5)
        assert max(abs(w - 0.5) for w in want) > 1e-3  # the weights moved: the ratio is not zero


def test_orm_score_is_the_last_tag_score(tiny):
    assert orm.from_steps([[0.1, 0.7], [0.4], [], None]) == [0.7, 0.4, None, None]
    m, p = tiny
    probs = tasks.make_problems(2, seed=1)
    ims, qs = [tasks.render(x) for x in probs], [x["question"] for x in probs]
    steps = [[s for s, _, _ in tasks.gold_steps(x)] for x in probs]
    got, skipped = orm.score_answers(m, p, ims, qs, steps, batch_size=2)
    assert skipped == []
    # the reference: each whole answer scored on its own, read at its last tag
    assert got == pytest.approx([prm.score_prefixes(m, p, ims[i], qs[i], steps[i])[-1] for i in range(2)], abs=1e-5)


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], check=True, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_train_prm_then_score_end_to_end(tmp_path):
    suite = tmp_path / "suite"
    run("policy.py", "--n", "8", "--out", suite)
    base = tmp_path / "base"
    run("-m", "common.model", "--save", base)
    ck = tmp_path / "prm"
    run("train.py", "--objective", "prm", "--head", "tag", "--model", base, "--data", suite / "labels.jsonl",
        "--out", ck, "--max-steps", "3", "--batch-size", "4", "--eval-every", "3", "--eval-data",
        suite / "labels.jsonl")
    m, p = prm.load(str(ck), device="cpu")
    assert getattr(m, "implicit", None) is None and json.loads((ck / "train_config.json").read_text())["head"] == "tag"
    assert vlm.token_ids(p)["tag"] == vlm.token_ids(prm.load("tiny-init", device="cpu")[1])["tag"]
    files = ("--problems", suite / "problems.jsonl", "--candidates", suite / "candidates.jsonl")
    run("prm.py", "--model", ck, *files, "--out", tmp_path / "s.jsonl")
    recs = data.read_jsonl(tmp_path / "s.jsonl", "score")
    probs, cands, images = prm.load_inputs(suite / "problems.jsonl", suite / "candidates.jsonl")
    cands = {c["id"]: c for c in cands}
    assert len(recs) == len(cands) == 32 and {r["method"] for r in recs} == {"prm"}
    # the reference: the trained checkpoint scoring the same answers in this process, in batches of another size
    # (single pass = per prefix is test_single_pass_equals_per_prefix's)
    cs = list(cands.values())
    scored, _ = prm.score_steps(m, p, [images[c["problem_id"]] for c in cs],
                                [probs[c["problem_id"]]["question"] for c in cs], [c["steps"] for c in cs],
                                batch_size=5)
    ref = {c["id"]: s for c, s in zip(cs, scored)}
    for r in recs:
        assert r["scores"] == pytest.approx(ref[r["candidate_id"]], abs=1e-4), r["candidate_id"]
    run("orm.py", "--model", ck, *files, "--out", tmp_path / "o.jsonl")
    got = {r["candidate_id"]: r["score"] for r in data.read_jsonl(tmp_path / "o.jsonl", "score")}
    assert got == pytest.approx({cid: s[-1] for cid, s in ref.items()}, abs=1e-4)
    first = next(iter(cands))
    run("prm.py", "--model", ck, *files, "--show", tmp_path / "steps.png", "--id", first)
    assert Image.open(tmp_path / "steps.png").size[0] == 900
    log = [json.loads(line) for line in open(ck / "log.jsonl")]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    ev = [r["eval"] for r in log if "eval" in r]
    assert len(ev) == 1 and set(ev[0]) == {"step_acc", "step_auc", "first_error_f1"}


def test_show_caption_names_the_lucky_answer_and_the_first_wrong_step():
    cand = lambda ok, fe: {"id": "c", "steps": ["a", "b", "c", "d"], "correct": ok, "first_error": fe}  # noqa: E731
    assert pictures.caption(cand(True, 1)) == "final answer right, but step 2 wrong (lucky)"
    assert pictures.caption(cand(False, 2)) == "final answer wrong: step 3 is the first wrong step"
    assert pictures.caption(cand(True, -1)) == "final answer right, every step right"
    assert pictures.caption({"steps": ["a"], "correct": False}) == "final answer wrong; no oracle labels"
    # the default example teaches: lucky with a mid-way error first, then a mid-way error, then lucky, then any error
    pool = [cand(True, -1), cand(False, 0), cand(True, 0), cand(False, 3), cand(False, 2), cand(True, 1)]
    for i, c in enumerate(pool):
        c["id"] = str(i)
    assert pictures.pick_example(pool)["id"] == "5"
    assert pictures.pick_example(pool[:5])["id"] == "4"  # first wrong step mid-way (not the first, not the last)
    assert pictures.pick_example(pool[:4])["id"] == "2"  # lucky
    assert pictures.pick_example(pool[:2])["id"] == "1"  # any wrong step
    assert pictures.pick_example(pool[:1])["id"] == "0"  # nothing wrong: the first


def test_show_draws_each_score_beside_the_oracle_label(tmp_path):
    pr = tasks.make_problem("z", 0, kind="count_add")
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    rows = pictures.show(tasks.render(pr), pr["question"], steps, [0.9, 0.1, None, 0.2], tmp_path / "s.png",
                    "z: final answer right, but step 2 wrong (lucky)\nmodel m", first_error=1)
    assert [(r["step"], r["score"], r["oracle"]) for r in rows] == [
        (1, 0.9, "1 right"), (2, 0.1, "0 first wrong"), (3, None, "0 after the first"), (4, 0.2, "0 after the first")]
    img = Image.open(tmp_path / "s.png").convert("RGB")
    assert img.size[0] == 900
    # the last row's cells, below its text (the row ends 22 px above the bottom): PRM 0.2 reddish, oracle 0 red
    y = img.size[1] - 27
    prm_cell, oracle_cell = img.getpixel((75, y)), img.getpixel((225, y))
    assert prm_cell[0] > prm_cell[1] and oracle_cell[0] > oracle_cell[1]
    assert prm_cell != oracle_cell  # two columns: the PRM's score and the oracle's label
    rows = pictures.show(tasks.render(pr), pr["question"], steps, [0.5] * 4, tmp_path / "n.png", "no labels")
    assert {r["oracle"] for r in rows} == {"no oracle labels"}


def test_an_answers_scores_do_not_depend_on_the_rest_of_its_batch():
    """Scored alone, or in two different batches: the same numbers, to the last bit (answers are batched only with
    answers of their own length, so nothing is padded)."""
    m, p = prm.load("tiny", device="cpu")
    probs = tasks.make_problems(8, 0, "test")
    cands = [c for pr in probs for c in policy.candidates(pr, 3, 0)]
    by_id = {pr["id"]: pr for pr in probs}
    ims = [tasks.render(by_id[c["problem_id"]]) for c in cands]
    qs = [by_id[c["problem_id"]]["question"] for c in cands]
    st = [c["steps"] for c in cands]
    alone, _ = prm.score_steps(m, p, ims[:1], qs[:1], st[:1])
    with_all, _ = prm.score_steps(m, p, ims, qs, st, batch_size=16)
    with_others, _ = prm.score_steps(m, p, ims[::-1], qs[::-1], st[::-1], batch_size=5)
    assert len({len(s) for s in st}) > 1  # answers of several lengths were scored together
    assert alone[0] == with_all[0] == with_others[-1]
