"""bench.py end to end on a very small configuration: every table recomputed here by hand from the files the
stages wrote (pools, scores), the cache, and the refusal of a cached model trained with other settings."""
import json

import pytest

import bench
import controls
import data
import metrics
import model as M
import prm
import tasks

METHODS = ["random", "majority", "weighted_prm", "orm", "prm_min", "prm_mean", "prm_prod", "prm_last", "prm_last2",
           "judge_orm", "judge_prm", "oracle"]


def best_of(pool):
    """Expected correctness of the argmax of [(score or None, correct)]: ties split evenly, unscored never picked."""
    scored = [(s, c) for s, c in pool if s is not None]
    if not scored:
        return sum(c for _, c in pool) / len(pool)
    top = [c for s, c in scored if s == max(s for s, _ in scored)]
    return sum(top) / len(top)


def test_bench_small_run_tables_equal_a_recomputation(tmp_path):
    a = bench.Args(out=str(tmp_path), n_train=12, n_dev=4, n_test=6, steps=4, judge_n=2, draws=1, batch_size=8)
    res = bench.main(a)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seconds"] == res["seconds"] > 0
    probs = {p["id"]: p for p in data.read_jsonl(tmp_path / "problems_test.jsonl", "problem")}
    cands = data.read_jsonl(tmp_path / "cands_test_synthetic.jsonl", "candidate")
    scores = json.loads((tmp_path / "scores.json").read_text())
    S = scores["test_synthetic"]
    pools = {pid: [c for c in cands if c["problem_id"] == pid] for pid in probs}
    assert len(probs) == 6 and all(len(v) == a.pool for v in pools.values())
    # the stored PRM scores are the trained PRM's (4 answers scored again here, in another batch)
    m, p = M.load(str(tmp_path / "prm"), device="cpu")
    again, _ = prm.score_steps(m, p, [tasks.render(probs[c["problem_id"]]) for c in cands[:4]],
                               [probs[c["problem_id"]]["question"] for c in cands[:4]], [c["steps"] for c in cands[:4]])
    assert [S["prm"][c["id"]] for c in cands[:4]] == [pytest.approx(s, abs=1e-5) for s in again]
    # Best-of-N: random is the pool's mean correctness at every N; at N=16 (the whole pool) the oracle is "any right",
    # an argmax rule the best-scored candidate's correctness. Per family and overall.
    judged = bench.judged_ids(list(probs.values()), a.judge_n)
    assert len(judged) == 2 and {probs[j]["family"] for j in judged} == {"text", "visual"}
    argmax = {"prm_min": ("prm", min), "prm_mean": ("prm", lambda s: sum(s) / len(s)), "orm": ("orm", None),
              "judge_orm": ("judge_orm", None), "judge_prm": ("judge_prm", lambda s: sum(s) / len(s))}
    for part in ("all", "text", "visual"):
        assert set(saved["bon"][part]) == set(METHODS)
        assert all(set(saved["bon"][part][m]) == {"1", "2", "4", "8", "16"} for m in METHODS)
        ids = [pid for pid in probs if part in ("all", probs[pid]["family"])]
        avg = lambda f, ids=ids: sum(f(pools[pid]) for pid in ids) / len(ids)  # noqa: E731
        mean_correct = avg(lambda pool: sum(c["correct"] for c in pool) / len(pool))
        assert all(v == pytest.approx(mean_correct, abs=1e-12) for v in saved["bon"][part]["random"].values())
        assert saved["bon"][part]["oracle"]["16"] == avg(lambda pool: float(any(c["correct"] for c in pool)))
        for name, (key, agg) in argmax.items():
            only = [pid for pid in ids if pid in judged] if name.startswith("judge") else ids
            want = sum(best_of([((agg or (lambda x: x))(S[key][c["id"]]) if c["id"] in S[key] else None,
                                 float(c["correct"])) for c in pools[pid]]) for pid in only) / len(only)
            assert saved["bon"][part][name]["16"] == pytest.approx(want, abs=1e-12), (part, name)
    assert saved["hybrid"]["prm_min"]["16"] == saved["segmentation"]["steps_min"]["16"] == saved["bon"]["all"][
        "prm_min"]["16"]
    # first-error F1: the threshold chosen on the dev pool's scores, the F1 measured on the test pool's
    dev_cands = data.read_jsonl(tmp_path / "cands_dev_synthetic.jsonl", "candidate")
    for key, name in (("prm", "prm"), ("orm_steps", "orm"), ("prior", "prior")):
        split = lambda cs, sc: ([sc[c["id"]] for c in cs if c["id"] in sc], [c["first_error"] for c in cs  # noqa: E731
                                                                              if c["id"] in sc])
        want = metrics.dev_test_f1(*split(dev_cands, scores["dev_synthetic"][key]), *split(cands, S[key]))
        assert saved["step"][name] == {"first_error_f1": round(want["first_error_f1"], 4),
                                       "threshold": want["threshold"], "acc_error": want["acc_error"],
                                       "acc_correct": want["acc_correct"]}, name
    assert saved["controls"]["fresh_auc"]["prm"] == controls.fresh_auc(cands, probs, S["prm"])
    labels = data.read_jsonl(tmp_path / "labels.jsonl", "labelled")
    assert saved["labelling"]["train_labels"]["records"] == len(labels) > 0
    assert {"mc", "mcts"} <= set(saved["labelling"])
    assert saved["speed"]["answers"] == 64 and saved["speed"]["steps"] == sum(len(c["steps"]) for c in cands[:64])
    assert saved["pools"] == {"dev_synthetic": 4 * a.pool, "test_synthetic": 6 * a.pool,
                              "dev_base": len(data.read_jsonl(tmp_path / "cands_dev_base.jsonl", "candidate")),
                              "test_base": len(data.read_jsonl(tmp_path / "cands_test_base.jsonl", "candidate"))}
    assert (tmp_path / "report.md").read_text().startswith("# Bench report")
    assert (tmp_path / "bon_curve.png").exists()
    # a rerun finds every stage cached
    again = bench.main(a)
    assert again["bon"] == json.loads(json.dumps(res["bon"]))
    # ... and still reports the whole pipeline's time: the stages' recorded times, not just the re-render
    stages = json.loads((tmp_path / "timings.json").read_text())
    assert {"problems.done", "pools.done", "labels.done", "train_prm", "train_orm", "scores.json"} <= set(stages)
    assert again["seconds_this_run"] < sum(stages.values()) <= again["seconds"]
    assert abs(res["seconds"] - res["seconds_this_run"]) < 0.5


def test_a_cached_model_trained_with_other_settings_is_refused(tmp_path):
    a = bench.Args(out=str(tmp_path))
    (tmp_path / "prm").mkdir()
    cfg = dict(model=a.base, max_steps=a.steps, lr=a.lr, batch_size=a.batch_size, seed=a.seed, head="tag", beta=a.beta)
    (tmp_path / "prm" / "train_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match=r"other settings .*'head': \('tag', 'implicit'\)"):
        bench.stage_train(a, tmp_path, "prm")
