"""controls.py: the base's step likelihood against a per-step reference computed here (the model run on each
prefix), fresh-step AUC per kind on literal candidates, key-step weights, the prior-only table, the blank image."""
import pytest
import torch

import prm
from lab import controls
from common import model as vlm
from common import tasks


def test_step_likelihood_equals_running_the_model_on_each_prefix():
    m, p = prm.load("tiny-init", device="cpu")
    probs = tasks.make_problems(3, seed=6)
    ims, qs = [tasks.render(x) for x in probs], [x["question"] for x in probs]
    steps = [[s for s, _, _ in tasks.gold_steps(probs[0])], ["There are 3 red shapes.", "3 + 4 = 8."],
             [s for s, _, _ in tasks.gold_steps(probs[2])][:1]]
    got = controls.step_likelihood(m, p, ims, qs, steps, batch_size=2)  # a padded batch of two, then one
    assert [len(s) for s in got] == [len(s) for s in steps]
    for i in range(3):
        for k in range(len(steps[i])):  # by hand: "Step 1: .. Step k+1: s_k" alone, the tokens after "Step k: ..\n"
            head = vlm.chat_prompt(p, qs[i]) + (tasks.format_steps(steps[i][:k]) + "\n" if k else "")
            full = p(text=[vlm.chat_prompt(p, qs[i]) + tasks.format_steps(steps[i][:k + 1])], images=[ims[i]],
                     return_tensors="pt")
            n0 = p(text=[head], images=[ims[i]], return_tensors="pt")["input_ids"].shape[1]
            with torch.no_grad():
                lp = torch.log_softmax(m(**{k_: full[k_] for k_ in vlm.MODEL_KEYS if k_ in full}).logits[0].float(), -1)
            x = full["input_ids"][0]
            want = torch.stack([lp[j - 1, x[j]] for j in range(n0, len(x))]).mean().exp().item()
            assert got[i][k] == pytest.approx(want, rel=1e-4), (i, k)


def test_step_likelihood_gives_one_entry_per_answer_when_one_is_too_long():
    """An answer over max_len is skipped by model.encode; the others keep their own scores and places (bench.py
    zips the result with the candidate ids)."""
    m, p = prm.load("tiny-init", device="cpu")
    pr = tasks.make_problem("a", 0)
    im, q = tasks.render(pr), pr["question"]
    steps = [["There are 3 red shapes."], ["x" * 3000], ["3 + 4 = 7."]]
    got = controls.step_likelihood(m, p, [im] * 3, [q] * 3, steps, batch_size=8)
    assert len(got) == 3
    for i in (0, 2):
        assert got[i] == pytest.approx(controls.step_likelihood(m, p, [im], [q], steps[i:i + 1])[0], rel=1e-5)


def test_fresh_auc_per_step_kind_on_literal_candidates():
    visual = tasks.make_problem("v", 0, kind="count_add")  # kinds: count, count, arith, answer
    text = tasks.make_problem("t", 0, kind="rect_perimeter")  # kinds: text_arith, text_arith, answer
    assert [k for _, k, _ in tasks.gold_steps(visual)] == ["count", "count", "arith", "answer"]
    assert [k for _, k, _ in tasks.gold_steps(text)] == ["text_arith", "text_arith", "answer"]
    probs = {"v": visual, "t": text}
    cands = [{"id": "c1", "problem_id": "v", "first_error": -1}, {"id": "c2", "problem_id": "v", "first_error": 0},
             {"id": "c3", "problem_id": "v", "first_error": 2}, {"id": "c4", "problem_id": "v", "first_error": None},
             {"id": "c5", "problem_id": "t", "first_error": 1}, {"id": "c6", "problem_id": "t", "first_error": -1},
             {"id": "c7", "problem_id": "t", "first_error": -1}, {"id": "c8", "problem_id": "v", "first_error": -1}]
    scores = {"c1": [0.9, 0.8, 0.7, 0.6], "c2": [0.3, 0.95, 0.2, 0.1], "c3": [0.85, 0.4, 0.75, 0.5],
              "c4": [0.0, 0.0, 0.0, 0.0], "c5": [0.6, 0.65, 0.1], "c6": [0.7, 0.5, 0.9], "c8": [0.2]}
    # fresh steps (none wrong before them), labelled right unless they are the first error; answers are no kind:
    # perception: right 0.9 0.8 (c1) 0.85 0.4 (c3) 0.2 (c8), wrong 0.3 (c2; its later steps are not fresh) -> 4/5
    # visual arith: right 0.7 (c1), wrong 0.75 (c3) -> 0. text arith: right 0.6 (c5) 0.7 0.5 (c6), wrong 0.65 -> 1/3
    # c4 has no first error, c7 no scores: both left out
    assert controls.fresh_auc(cands, probs, scores) == {"perception": 0.8, "text_arith": 0.3333, "visual_arith": 0.0}
    assert controls.fresh_auc(cands[:1], probs, scores) == {"perception": 0.5, "visual_arith": 0.5}  # one class


def test_fresh_items_are_the_steps_before_and_at_the_first_error():
    visual = tasks.make_problem("v", 0, kind="count_add")  # kinds: count, count, arith, answer
    c = {"id": "c", "problem_id": "v", "first_error": 1}
    # step 0 right (fresh), step 1 the first error (fresh, wrong), later steps are not fresh
    assert controls.fresh_items(c, visual, [0.9, 0.2, 0.8, 0.7]) == [
        {"kind": "perception", "score": 0.9, "label": True}, {"kind": "perception", "score": 0.2, "label": False}]
    # all right: every step with a checkable kind (the restating answer has none); fewer scores than steps: those
    assert controls.fresh_items(dict(c, first_error=-1), visual, [0.9, 0.8, 0.7, 0.6]) == [
        {"kind": "perception", "score": 0.9, "label": True}, {"kind": "perception", "score": 0.8, "label": True},
        {"kind": "visual_arith", "score": 0.7, "label": True}]
    assert controls.fresh_items(dict(c, first_error=-1), visual, [0.9]) == [
        {"kind": "perception", "score": 0.9, "label": True}]
    assert controls.fresh_items(dict(c, first_error=None), visual, [0.9]) == []  # no oracle: nothing
    assert controls.fresh_items(c, visual, None) == []  # not scored


def test_key_weights():
    steps = ["There are 3 red shapes.", "There are 4 blue shapes.", "3 + 4 = 7.", "The answer is 7."]
    assert controls.key_weighted([1.0, 1.0, 1.0, 0.0], steps) == 6 / 7  # the restatement weighs 1, the rest 2
    assert controls.key_weighted([0.0, 0.0, 0.0, 1.0], steps) == 1 / 7
    assert controls.key_weighted([], []) == 0.0


def test_prior_table_counts_template_and_value():
    recs = [{"completions": ["There are 3 red shapes.", "3 + 4 = 7."], "labels": [1.0, 0.0]},
            {"completions": ["There are 3 red shapes.", "3 + 4 = 8."], "labels": [0.0, 0.0]},
            {"completions": ["There are 5 red shapes."], "labels": [1.0]}]
    t = controls.prior_table(recs)
    assert controls.prior_scores(t, [["There are 3 red shapes.", "There are 5 red shapes.", "There are 6 red shapes.",
                                      "2 + 2 = 4.", "The answer is 4."]]) == [[0.5, 1.0, 2 / 3, 0.0, 0.5]]


def test_blank_images_keep_their_size_and_lose_their_content():
    im = tasks.render(tasks.make_problem("v", 0, kind="count_add"))
    (b,) = controls.blank([im])
    assert b.size == im.size and b.getcolors() == [(64 * 64, (255, 255, 255))] and len(im.getcolors()) > 1
