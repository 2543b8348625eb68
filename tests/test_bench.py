"""bench.py end to end on a very small configuration, and the controls on literal inputs."""
import json

import bench
import controls

METHODS = ["random", "majority", "weighted_prm", "orm", "prm_min", "prm_mean", "prm_prod", "prm_last", "prm_last2",
           "judge_orm", "judge_prm", "oracle"]


def test_segment_and_key_weights():
    steps = ["There are 3 red shapes.", "There are 4 blue shapes.", "3 + 4 = 7.", "The answer is 7."]
    assert controls.segment(steps, "steps") == steps
    assert controls.segment(steps, "pairs") == ["There are 3 red shapes. There are 4 blue shapes.",
                                                "3 + 4 = 7. The answer is 7."]
    chunks = controls.segment(steps, "chunks")
    assert "".join(chunks) == " ".join(steps) and all(len(c) <= 24 for c in chunks)
    assert controls.key_weighted([1.0, 1.0, 1.0, 0.0], steps) == 6 / 7  # the restatement weighs 1, the rest 2


def test_prior_table_counts_template_and_value():
    recs = [{"completions": ["There are 3 red shapes.", "3 + 4 = 7."], "labels": [1.0, 0.0]},
            {"completions": ["There are 3 red shapes.", "3 + 4 = 8."], "labels": [0.0, 0.0]},
            {"completions": ["There are 5 red shapes."], "labels": [1.0]}]
    t = controls.prior_table(recs)
    assert controls.prior_scores(t, [["There are 3 red shapes.", "There are 5 red shapes.", "There are 6 red shapes.",
                                      "2 + 2 = 4.", "The answer is 4."]]) == [[0.5, 1.0, 2 / 3, 0.0, 0.5]]


def test_bench_small_run_writes_every_key(tmp_path):
    a = bench.Args(out=str(tmp_path), n_train=12, n_dev=4, n_test=6, steps=4, judge_n=2, draws=1, batch_size=8)
    res = bench.main(a)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seconds"] == res["seconds"] > 0
    for part in ("all", "text", "visual"):
        for m in METHODS:
            accs = saved["bon"][part][m]
            assert set(accs) == {"1", "2", "4", "8", "16"} and all(0.0 <= v <= 1.0 for v in accs.values())
    # random is the pool's mean correctness at every N, and the oracle is never below any method
    r = saved["bon"]["all"]["random"]
    assert max(r.values()) - min(r.values()) < 1e-9
    assert all(saved["bon"]["all"]["oracle"]["16"] >= saved["bon"]["all"][m]["16"] - 1e-9 for m in METHODS)
    for k in ("prm", "orm", "judge_prm"):
        assert 0.0 <= saved["step"][k]["first_error_f1"] <= 1.0
    for k in ("mc", "mcts"):
        assert saved["labelling"][k]["rollouts_per_solution"] > 0
        assert 0.0 <= saved["labelling"][k]["first_error_agreement"] <= 1.0
    assert saved["speed"]["single_pass_s"] > 0 and saved["speed"]["per_prefix_s"] > 0
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
    import pytest
    a = bench.Args(out=str(tmp_path))
    (tmp_path / "prm").mkdir()
    cfg = dict(model=a.base, max_steps=a.steps, lr=a.lr, batch_size=a.batch_size, seed=a.seed, head="tag", beta=a.beta)
    (tmp_path / "prm" / "train_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match=r"other settings .*'head': \('tag', 'implicit'\)"):
        bench.stage_train(a, tmp_path, "prm")
