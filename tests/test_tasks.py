"""The synthetic suite: determinism, the oracle on hand-made cases, honest errors (answer matching: test_answers.py)."""
import collections
import dataclasses
import json
import random
import re

import pytest

from common import pictures
import policy
from common import answers
from common import tasks
from steps import split_steps


def test_same_seed_same_problems_and_candidates():
    a, b = tasks.make_problems(12, seed=3), tasks.make_problems(12, seed=3)
    assert a == b
    assert tasks.make_problems(12, seed=4) != a
    ca = [policy.candidates(p, 4, seed=3) for p in a]
    cb = [policy.candidates(p, 4, seed=3) for p in b]
    assert ca == cb
    assert tasks.render(a[0]).tobytes() == tasks.render(b[0]).tobytes()


def test_kinds_balanced_and_families():
    ps = tasks.make_problems(8, seed=0)
    assert [p["kind"] for p in ps[:4]] == ["count_add", "count_diff", "rect_perimeter", "shop_total"]
    assert collections.Counter(p["family"] for p in ps) == {"visual": 4, "text": 4}


def test_a_problem_of_a_split_has_a_content_of_that_split():
    c = tasks.split_contents("count_diff")["test"][0]  # (colour A, colour B, count A, count B)
    p = tasks.make_problem("x", 5, kind="count_diff", split="test", content=c)
    f = p["facts"]
    assert (f["A"], f["B"], f[f["A"]], f[f["B"]]) == c and f[f["A"]] > f[f["B"]] and p["split"] == "test"
    assert tasks.content_of(p) == ("count_diff", c) and tasks.split_of(p) == "test"
    # the layout, distractors and id are not the content: another id, the same content and split
    q = tasks.make_problem("y", 6, kind="count_diff", split="test", content=c)
    assert tasks.content_of(q) == tasks.content_of(p) and q["layout_seed"] != p["layout_seed"]
    assert tasks.split_of(tasks.make_problem("z", 0, kind="shop_total", split="dev")) == "dev"
    with pytest.raises(ValueError, match="unknown split 'eval'"):
        tasks.make_problem("x", 0, split="eval")
    for k in tasks.KINDS:  # the shares of tasks.SPLITS (rounded; test takes the rest), every content in one split
        d, n = tasks.split_contents(k), len(tasks.contents(k))
        assert [len(d[s]) for s in ("train", "tune", "dev")] == [round(tasks.SPLITS[s] * n) for s in
                                                                 ("train", "tune", "dev")]
        assert sum(map(len, d.values())) == n == len(set().union(*map(set, d.values())))
    with pytest.raises(dataclasses.FrozenInstanceError):  # split_contents is cached per Suite
        tasks.Suite().count_max = 9


def test_make_problems_walks_a_seeded_shuffle_of_the_split_contents():
    rect = tasks.split_contents("rect_perimeter")["tune"]  # 6 contents
    ps = tasks.make_problems(4 * 13, 0, "tune")
    assert [p["id"] for p in ps[:2]] == ["tune-00000", "tune-00001"] and {p["split"] for p in ps} == {"tune"}
    walk = [tasks.content_of(p)[1] for p in ps if p["kind"] == "rect_perimeter"]
    assert len(walk) == 13 and sorted(walk[:6]) == sorted(rect)  # each content once before any repeats
    assert walk[6:12] == walk[:6] and walk[12] == walk[0]  # then the same order again
    assert tasks.make_problems(10, 0, "tune") == ps[:10]  # problem i depends only on (seed, split, i)
    other = [tasks.content_of(p)[1] for p in tasks.make_problems(4 * 6, 1, "tune") if p["kind"] == "rect_perimeter"]
    assert sorted(other) == sorted(rect) and other != walk[:6]  # another seed: another order


def test_visual_counts_are_in_the_image():
    p = tasks.make_problem("x", 0, kind="count_add")
    img, f = tasks.render(p), p["facts"]
    counted = collections.Counter()
    for cy in range(8):
        for cx in range(8):
            px = img.getpixel((cx * 8 + 4, cy * 8 + 4))  # the centre of each patch cell
            for name, rgb in tasks.COLOURS.items():
                if px == rgb:
                    counted[name] += 1
    assert counted[f["A"]] == f[f["A"]] and counted[f["B"]] == f[f["B"]]


def hand_problem():
    return {"id": "h", "kind": "count_add", "family": "visual", "question": "q",
            "facts": {"A": "red", "B": "blue", "red": 3, "blue": 4, "green": 0, "yellow": 0}, "layout_seed": 1}


def test_gold_steps_and_oracle_on_hand_made_cases():
    p = hand_problem()
    gold = [s for s, _, _ in tasks.gold_steps(p)]
    assert gold == ["There are 3 red shapes.", "There are 4 blue shapes.", "3 + 4 = 7.", "The answer is 7."]
    assert tasks.first_error(p, gold) == -1
    assert tasks.first_error(p, ["There are 3 red shapes.", "There are 5 blue shapes.", "3 + 5 = 8.",
                                 "The answer is 8."]) == 1
    assert tasks.first_error(p, ["There are 3 red shapes.", "There are 4 blue shapes.", "3 + 4 = 8.",
                                 "The answer is 7."]) == 2  # a slip, then a lucky right answer: still wrong from 2
    assert tasks.first_error(p, gold[:2]) == 1  # stopping early: the last step ends the solution too early
    assert tasks.first_error(p, ["4 + 3 = 7."]) == 0
    assert tasks.step_labels(p, gold[:1] + ["There are 2 blue shapes.", "3 + 2 = 5."]) == [1.0, 0.0, 0.0]


def test_text_kinds_gold():
    p = {"id": "t", "kind": "shop_total", "family": "text", "facts": {"n": 3, "c": 4, "k": 9}, "question": "q"}
    assert [s for s, _, _ in tasks.gold_steps(p)] == ["3 * 4 = 12.", "12 + 9 = 21.", "The answer is 21."]
    p = {"id": "r", "kind": "rect_perimeter", "family": "text", "facts": {"w": 4, "h": 7}, "question": "q"}
    assert tasks.gold_values(p) == [11, 22, 22]


def test_the_paragraph_format_opens_some_steps_with_a_sentence_of_reasoning():
    gold = [s for s, _, _ in tasks.gold_steps(hand_problem())]
    assert tasks.format_steps(gold, "paragraph") == ("There are 3 red shapes. I look for the blue shapes in the "
                                                     "picture. There are 4 blue shapes. 3 + 4 = 7. The answer is 7.")
    assert tasks.format_steps(["3 * 4 = 12.", "12 + 9 = 21.", "The answer is 21."], "paragraph") == (
        "3 * 4 = 12. Adding the two numbers gives the total. 12 + 9 = 21. The answer is 21.")
    assert tasks.format_steps(gold, "plain") == "\n".join(gold)
    # a candidate's steps (and so its labels) stay the writer's, only its paragraph text has the extra sentences;
    # every other format splits back into exactly its steps, a paragraph often not (about 37% of real ones do)
    lead = re.compile("|".join(re.escape(v).replace(re.escape("{}"), r"\w+") + " " for v in tasks.LEADS.values()))
    right = collections.Counter()
    for p in tasks.make_problems(100, seed=0, split="test"):
        for c in policy.candidates(p, 8, seed=0):
            para = "\n" not in c["text"]
            assert lead.sub("", c["text"]) == " ".join(c["steps"]) if para else split_steps(c["text"]) == c["steps"]
            right[para, len(split_steps(c["text"])) == len(c["steps"])] += 1
    assert right[False, False] == 0 and right[True, False] > 0
    assert 0.3 < right[True, True] / (right[True, True] + right[True, False]) < 0.45


def test_sampler_continues_a_prefix_and_errors_propagate():
    p = hand_problem()
    outs = policy.sample(p, 50, prefix=["There are 5 red shapes."], rng=random.Random(0))
    assert all(o["steps"][0] == "There are 5 red shapes." for o in outs)
    # the wrong count is carried into the sum (a step that reads "5 + b = ..." before any slip)
    assert sum(o["steps"][2].startswith("5 + ") for o in outs) == 50
    assert all(tasks.first_error(p, o["steps"]) == 0 for o in outs)


def test_wrong_values_come_from_the_same_range():
    """A claimed count alone says nothing: wrong counts cover the same range as right ones."""
    right, wrong = collections.Counter(), collections.Counter()
    for p in tasks.make_problems(400, seed=1):
        if p["kind"] != "count_add":
            continue
        for c in policy.candidates(p, 8, seed=1):
            v = int(answers.numbers(c["steps"][0])[0])
            (right if c["first_error"] != 0 else wrong)[v] += 1
    assert set(right) == set(wrong) == set(range(1, 8))


def test_strength_orders_accuracy_and_traps_hurt_majority():
    ps = tasks.make_problems(200, seed=2)
    acc = {s: sum(c["correct"] for p in ps for c in policy.candidates(p, 8, 2, s)) / (8 * len(ps))
           for s in ("weak", "default", "strong")}
    assert acc["weak"] < acc["default"] < acc["strong"]
    trapped = [p for p in ps if "trap" in p]
    assert 0.15 < len(trapped) / len(ps) < 0.45
    maj = []
    for p in trapped:
        cs = policy.candidates(p, 16, 2)
        top = collections.Counter(c["answer"] for c in cs).most_common(1)[0][0]
        maj.append(answers.match_answer(top, p["answer"]))
    assert sum(maj) / len(maj) < 0.6  # majority voting often follows the shared mistake


def test_write_suite_outputs(tmp_path):
    from common import data
    policy.main(["--n", "4", "--out", str(tmp_path)])
    for name in ("problems.jsonl", "candidates.jsonl", "labels.jsonl", "sheet.png"):
        assert (tmp_path / name).exists()
    assert len(list((tmp_path / "images").iterdir())) == 4
    labs = data.read_jsonl(tmp_path / "labels.jsonl", "labelled")
    cands = data.read_jsonl(tmp_path / "candidates.jsonl", "candidate")
    assert len(labs) == len(cands) == 16
    for lab, c in zip(labs, cands):
        fe = c["first_error"]
        assert lab["labels"] == [1.0 if fe == -1 or i < fe else 0.0 for i in range(len(c["steps"]))]


def test_a_checkpoint_writes_the_candidates_when_named(tmp_path, capsys):
    """policy.py --model: the candidates are that model's sampled answers (not the sampler's), checked by the
    oracle; the same seed gives the same answers."""
    from common import data
    policy.main(["--n", "2", "--cands", "3", "--model", "tiny", "--split", "tune", "--out", str(tmp_path / "a"),
                 "--stats"])
    cands = data.read_jsonl(tmp_path / "a" / "candidates.jsonl", "candidate")
    probs = {p["id"]: p for p in data.read_jsonl(tmp_path / "a" / "problems.jsonl", "problem")}
    assert len(cands) == 6 and {c["policy"] for c in cands} == {"tiny"}
    assert all(c["first_error"] == tasks.first_error(probs[c["problem_id"]], c["steps"]) for c in cands)
    assert "right" in capsys.readouterr().out  # the world table
    policy.main(["--n", "2", "--cands", "3", "--model", "tiny", "--split", "tune", "--out", str(tmp_path / "b")])
    assert data.read_jsonl(tmp_path / "b" / "candidates.jsonl", "candidate") == cands


def test_the_walkthrough_writes_held_out_problems(tmp_path, capsys):
    policy.main(["--n", "4", "--out", str(tmp_path)])  # README: python tasks.py --n 8 --out out/suite
    probs = [json.loads(line) for line in (tmp_path / "problems.jsonl").read_text().splitlines()]
    assert len(probs) == 4 and all(p["split"] == "test" == tasks.split_of(p) for p in probs)
    assert (tmp_path / "sheet.png").exists() and "wrote 4 problems" in capsys.readouterr().out


def test_the_sheet_has_a_legend_of_its_colours_and_of_trapped(tmp_path):
    from PIL import Image
    probs, cands, _ = policy.write_suite(tmp_path, 4, seed=3)  # seed 3: problem 2 is trapped at its first step
    assert [p.get("trap", {}).get("step") for p in probs] == [None, None, 0, None]
    legend = pictures.contact_sheet(probs, cands, tmp_path / "images", tmp_path / "s.png")
    assert [t for t, _ in legend] == [
        "4 of 4 problems, 2 candidates each. Steps by the oracle:", "right",
        "the first wrong step and every step after it",
        "(trapped: step k): most samples get step k wrong the same way, so a majority vote can fail"]
    img = Image.open(tmp_path / "s.png").convert("RGB")
    band = {img.getpixel((x, y)) for x in range(900) for y in range(44)}  # the legend, above the first problem
    assert legend[1][1] in band and legend[2][1] in band  # "right" and "first wrong" drawn in the steps' colours


def test_world_counts_right_lucky_and_where_the_first_error_falls():
    probs = [{"id": "a", "kind": "count_add"}, {"id": "b", "kind": "shop_total"}]
    cands = [{"problem_id": "a", "correct": True, "first_error": -1, "steps": ["1", "2", "3", "4"]},
             {"problem_id": "a", "correct": True, "first_error": 0, "steps": ["1", "2", "3", "4"]},  # lucky
             {"problem_id": "a", "correct": False, "first_error": 1, "steps": ["1", "2", "3", "4"]},
             {"problem_id": "b", "correct": True, "first_error": -1, "steps": ["1", "2", "3"]},
             {"problem_id": "b", "correct": False, "first_error": None, "steps": ["1"]}]  # no oracle: left out
    w = tasks.world(probs, cands)
    assert list(w) == ["count_add", "shop_total", "all"]
    assert w["count_add"] == {"answers": 3, "right": round(2 / 3, 4), "lucky": 0.5, "faithful": round(1 / 3, 4),
                              "steps": 4.0, "first_error_at": {"1": 1, "2": 1}}
    assert w["all"]["answers"] == 4 and w["all"]["lucky"] == round(1 / 3, 4) and w["all"]["steps"] == 3.75
