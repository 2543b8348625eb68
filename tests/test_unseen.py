"""lab/unseen.py: the two arms' contents (dev's, and as many of train's), their problems, and what their labels
hold."""
from common import tasks
from lab import unseen


def test_the_arms_differ_only_in_whether_the_base_saw_their_contents():
    seen, unseen_ = unseen.arm_contents("seen", 0), unseen.arm_contents("unseen", 0)
    for kind in tasks.KINDS:
        split = tasks.split_contents(kind)
        assert unseen_[kind] == split["dev"]
        assert len(seen[kind]) == len(split["dev"]) == len(set(seen[kind]))
        assert set(seen[kind]) <= set(split["train"])
    assert unseen.arm_contents("seen", 0) == seen  # seeded
    assert unseen.arm_contents("seen", 1) != seen


def test_arm_problems_walk_every_content_before_repeating_one():
    n_kinds = len(tasks.KINDS)
    smallest = min(len(cs) for cs in unseen.arm_contents("unseen", 0).values())
    probs = unseen.arm_problems("unseen", n_kinds * (smallest + 1), 0)
    assert [p["id"] for p in probs[:2]] == ["unseen-00000", "unseen-00001"]
    for kind, contents in unseen.arm_contents("unseen", 0).items():
        mine = [tasks.content_of(p)[1] for p in probs if p["kind"] == kind]
        assert len(mine) == smallest + 1
        assert set(mine) <= set(contents)
        first = mine[:min(len(contents), len(mine))]
        assert len(set(first)) == len(first)  # no repeat until all are used
        assert all(tasks.split_of(p) == "dev" for p in probs if p["kind"] == kind)
    seen = unseen.arm_problems("seen", 8, 0)
    assert all(tasks.split_of(p) == "train" for p in seen)
    assert [p["question"] for p in seen] == [p["question"] for p in unseen.arm_problems("seen", 8, 0)]


def test_world_of_labels_counts_right_answers_and_wrong_steps_by_the_oracle():
    visual = tasks.make_problem("v", 0, kind="count_add", split="dev")
    text = tasks.make_problem("t", 0, kind="shop_total", split="dev")
    gold_v = [s for s, _, _ in tasks.gold_steps(visual)]
    gold_t = [s for s, _, _ in tasks.gold_steps(text)]
    wrong_v = ["There are 99 shapes."] + gold_v[1:]  # a wrong count, the answer still right

    def record(i, prob, steps, correct):
        return {"id": f"r{i}", "images": ["images/x.png"], "prompt": prob["question"], "completions": steps,
                "labels": [1.0] * len(steps), "first_error": -1,
                "meta": {"problem_id": prob["id"], "correct": correct, "method": "mcts"}}
    records = [record(0, visual, gold_v, True), record(1, visual, wrong_v, True), record(2, text, gold_t, True),
               record(3, text, gold_t[:-1] + ["The answer is 0."], False)]
    got = unseen.world_of_labels({"v": visual, "t": text}, records, 0.1)
    assert got["answers"] == 4 and got["right"] == {"count_add": 1.0, "shop_total": 0.5}
    assert got["right_all"] == 0.75
    assert got["wrong_step"] == {"text": 0.5, "visual": 0.5}
    assert got["vs_oracle"]["lucky"]["records"] == 1  # the wrong count that adds up right
