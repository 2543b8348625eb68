"""judge.py: the reply parser on literal replies, the rubric prompts, the logits-mode score against the expectation
computed here from the model's logits after "Overall Score: ", generate mode on literal replies, and the PRM-mode
regrouping of one call per step prefix."""
import pytest
import torch

import prm
import judge
from common import model as vlm
from common import tasks
from common import tiny


@pytest.mark.parametrize("reply, score", [
    ("Overall Score: 4", 0.75),
    ("The steps are clear.\nOverall Score: 1", 0.0),
    ("Overall Score:5", 1.0),
    ("Overall Score: **3**", 0.5),
    ("Overall Score: 2. Wait, I revise it.\nOverall Score: 5", 1.0),  # the last one counts
    ("Overall Score: 45", None),  # not a 1-5 score
    ("Overall Score: 0", None),
    ("Overall Score: 6", None),
    ("Score: 4", None),
    ("", None),
])
def test_parse_score_on_literal_replies(reply, score):
    assert judge.parse_score(reply) == score


def test_prompts_judge_the_whole_answer_or_the_latest_step():
    steps = ["There are 3 red shapes.", "3 + 4 = 7."]
    assert judge.prompt("Q?", steps) == judge.RUBRIC.format(
        what="whole solution", question="Q?", solution="There are 3 red shapes.\n3 + 4 = 7.")
    assert judge.prompt("Q?", steps, upto=0) == judge.RUBRIC.format(
        what="latest step (Step 1)", question="Q?", solution="Step 1: There are 3 red shapes.")
    assert judge.prompt("Q?", steps, upto=1).endswith(
        "rate the latest step (Step 2) from 1 (poor) to 5 (excellent) for relevance, coherence, accuracy and clarity. "
        "End your reply with \"Overall Score: N\".\n\nQuestion: Q?\n\nSolution:\nStep 1: There are 3 red shapes.\n"
        "Step 2: 3 + 4 = 7.")


def test_logits_mode_is_the_expected_score_after_overall_score():
    m, p = prm.load("tiny-init", device="cpu")
    probs = tasks.make_problems(3, seed=4)
    ims = [tasks.render(x) for x in probs]
    prompts = [judge.prompt(x["question"], [s for s, _, _ in tasks.gold_steps(x)][:k + 1]) for k, x in
               enumerate(probs)]  # three lengths: right padding in a batch of two, then one alone
    got, fails = judge.Judge(m, p, "logits", batch_size=2).rate(ims, prompts)
    assert fails == 0 and len(got) == 3
    digits = p.tokenizer.convert_tokens_to_ids([str(d) for d in range(1, 6)])
    for im, q, g in zip(ims, prompts, got):  # by hand: each prompt alone, the logits at its last position
        enc = p(text=[vlm.chat_prompt(p, q) + "Overall Score: "], images=[im], return_tensors="pt")
        with torch.no_grad():
            logits = m(**{k: enc[k] for k in vlm.MODEL_KEYS if k in enc}).logits[0, -1]
        prob = torch.softmax(logits[digits].double(), 0)
        assert g == pytest.approx((sum((d + 1) * prob[d].item() for d in range(5)) - 1) / 4, abs=1e-5)
    assert max(got) - min(got) > 1e-5  # three different prompts, three different scores


def test_generate_mode_parses_each_reply_and_counts_failures(monkeypatch):
    replies = {"a": "Good.\nOverall Score: 5", "b": "no score here", "c": "Overall Score: 45", "d": "Overall Score: 2"}
    batches = []

    def fake_generate(model, processor, images, prompts, max_new_tokens=96):
        batches.append(list(prompts))
        return [replies[q] for q in prompts]
    monkeypatch.setattr(judge, "generate", fake_generate)
    scores, fails = judge.Judge(None, tiny.tiny_processor(), "generate", batch_size=3).rate([None] * 4, list("abcd"))
    assert batches == [["a", "b", "c"], ["d"]]
    assert scores == [1.0, None, None, 0.25] and fails == 2


def test_judge_steps_asks_once_per_prefix_and_regroups():
    asked = []

    class FakeJudge:  # any object with rate(images, prompts) is a judge
        def rate(self, images, prompts):
            asked.extend(zip(images, prompts))
            return [i / 10 for i in range(len(prompts))], 1
    steps = [["a1", "a2", "a3"], [], ["c1"]]
    out, fails = judge.judge_steps(FakeJudge(), ["ia", "ib", "ic"], ["qa", "qb", "qc"], steps)
    assert out == [[0.0, 0.1, 0.2], [], [0.3]] and fails == 1
    assert asked == [("ia", judge.prompt("qa", steps[0], 0)), ("ia", judge.prompt("qa", steps[0], 1)),
                     ("ia", judge.prompt("qa", steps[0], 2)), ("ic", judge.prompt("qc", steps[2], 0))]
    asked.clear()
    assert judge.judge_answers(FakeJudge(), ["ia", "ic"], ["qa", "qc"], [steps[0], steps[2]]) == ([0.0, 0.1], 1)
    assert asked == [("ia", judge.prompt("qa", steps[0])), ("ic", judge.prompt("qc", steps[2]))]
