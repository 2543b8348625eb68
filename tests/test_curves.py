"""lab/curves.py: the oracle's relabelling of the same solutions, a run read back instead of retrained when its
settings and labels match (and retrained when they do not), the table and the plot."""
import json

import pytest

from common import tasks
from lab import curves


def test_oracle_records_relabel_the_same_solutions():
    prob = tasks.make_problem("c", 0, kind="count_add")
    gold = [s for s, _, _ in tasks.gold_steps(prob)]
    wrong = ["Step 1: There are 9 shapes."] + gold[1:]
    recs = [{"id": f"c-{i}", "images": ["images/c.png"], "prompt": prob["question"], "completions": steps,
             "labels": [1.0] * len(steps), "first_error": -1,
             "meta": {"problem_id": "c", "correct": True, "method": "mcts"}} for i, steps in enumerate((gold, wrong))]
    out = curves.oracle_records({"c": prob}, recs)
    assert [r["completions"] for r in out] == [gold, wrong] and [r["id"] for r in out] == ["c-0", "c-1"]
    assert [r["first_error"] for r in out] == [-1, 0] and out[1]["labels"] == [0.0] * len(wrong)
    assert {r["meta"]["method"] for r in out} == {"oracle"} and out[1]["meta"]["correct"] is True


def test_a_run_is_read_back_only_with_the_same_settings_and_labels(tmp_path, monkeypatch):
    a = curves.Args(out=str(tmp_path), steps=4, every=2)
    labels = tmp_path / "labels_mcts.jsonl"
    labels.write_text('{"x": 1}\n')
    points = [{"step": 0, "first_error_f1": 0.5}]
    calls = []

    def fake_train(a, head, source, labels):  # no training here: a folder with no kept model, so no point is read
        calls.append(head)
        folder = curves.run_folder(a, head, "mcts")
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    monkeypatch.setattr(curves, "train_run", fake_train)
    assert curves.curve(a, "likelihood", "mcts", labels, None, None) == ([], pytest.approx(0, abs=5))
    assert calls == ["likelihood"]
    done = curves.run_folder(a, "likelihood", "mcts") / "points.json"
    kept = json.loads(done.read_text())
    done.write_text(json.dumps({**kept, "points": points, "seconds": 12.0}))
    assert curves.curve(a, "likelihood", "mcts", labels, None, None) == (points, 12.0)  # read back
    assert calls == ["likelihood"]
    labels.write_text('{"x": 2}\n')  # other labels: trained again
    curves.curve(a, "likelihood", "mcts", labels, None, None)
    assert calls == ["likelihood", "likelihood"]


def test_kept_models_read_with_an_older_point_are_read_again_not_retrained(tmp_path, monkeypatch):
    a = curves.Args(out=str(tmp_path), steps=4, every=2)
    labels = tmp_path / "labels_mcts.jsonl"
    labels.write_text('{"x": 1}\n')
    calls, read = [], []
    monkeypatch.setattr(curves, "train_run", lambda a, head, source, labels: calls.append(head))
    monkeypatch.setattr(curves.prm, "load", lambda path, device=None: (path, None))
    monkeypatch.setattr(curves, "point", lambda model, processor, tune, dev: read.append(model) or {"bo16": 0.5})
    folder = curves.run_folder(a, "likelihood", "mcts")
    for step in (0, 2, 4):  # the kept models of a finished run
        (folder / f"step-{step:06d}").mkdir(parents=True)
    curves.curve(a, "likelihood", "mcts", labels, None, None)  # no points.json: trained
    assert calls == ["likelihood"] and len(read) == 3
    done = folder / "points.json"
    kept = json.loads(done.read_text())
    done.write_text(json.dumps({**kept, "measures": curves.MEASURES - 1, "seconds": 30.0}))
    points, seconds = curves.curve(a, "likelihood", "mcts", labels, None, None)
    assert calls == ["likelihood"] and len(read) == 6  # read again, not trained again
    assert [p["step"] for p in points] == [0, 2, 4] and seconds >= 30.0  # the training time is kept


def test_change_is_the_last_point_minus_step_0_paired():
    probs = {f"p{i}": tasks.make_problem(f"p{i}", 0, kind=kind) for i, kind in enumerate(["count_add", "shop_total"] * 3)}
    cands = [{"id": f"{pid}-{j}", "problem_id": pid, "first_error": [-1, 0][j]} for pid in probs for j in range(2)]
    first = {"items": {"pred": {c["id"]: -1 for c in cands}, "bo16": {p: 0.5 for p in probs},
                       "faithful16": {p: 0.25 for p in probs}}}
    last = {"items": {"pred": {c["id"]: c["first_error"] for c in cands}, "bo16": {p: 1.0 for p in probs},
                      "faithful16": {p: 0.25 for p in probs}}}
    c = curves.change(first, last, (probs, cands))
    # step 0 predicts no error anywhere: F1 0 (no error found); the last point is exact: F1 1
    assert c["first_error_f1"]["mean"] == 1.0 and c["bo16"]["mean"] == 0.5 and c["faithful16"]["mean"] == 0.0


def test_table_and_plot(tmp_path):
    point = {"first_error_f1": 0.7, "first_error_f1_ci": [0.6, 0.8], "threshold": 0.5, "fresh_auc": 0.8,
             "fresh_auc_ci": None, "bo16": 0.65, "bo16_ci": [0.5, 0.8], "bo16_aggregation": "mean",
             "faithful16": 0.5, "faithful16_ci": [0.4, 0.6], "faithful16_aggregation": "min"}
    change = {"first_error_f1": {"mean": 0.1, "ci": [0.02, 0.2]}, "bo16": {"mean": -0.05, "ci": None},
              "faithful16": {"mean": 0.0, "ci": [-0.1, 0.1]}}
    res = {"tune_problems": 3, "references": {"majority_bo16": 0.6, "majority_faithful16": 0.4,
                                              "content_free_f1": 0.55},
           "runs": [{"head": "separator", "labels": "oracle", "seconds": 1.0, "change": change,
                     "points": [{"step": 0, **point}, {"step": 2, **point, "bo16": 0.75}]}]}
    text = curves.table(res)
    assert ("| separator head | oracle | 2 | 0.700 [0.600, 0.800] | 0.800 | 0.750 [0.500, 0.800] (mean) | "
            "0.500 [0.400, 0.600] |") in text
    assert "| separator head | oracle | 0 -> 2 | +0.100 [+0.020, +0.200] | -0.050 | +0.000 [-0.100, +0.100] |" in \
        curves.change_table(res)
    assert "| majority vote (no model) | - | - | - | - | 0.600 | 0.400 |" in text
    curves.plot(res, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
