"""bench.py end to end on a very small configuration: the numbers of results.json recomputed here from the files the
stages wrote (candidates, scores.json, per_problem.jsonl), not checked against ranges; the stage cache (a changed
setting recomputes that stage and every later one, nothing changed recomputes nothing); evidence.py's CLI on the
kept rows; --seeds pooling. Plus the cache and the training launcher on toy inputs (no training)."""
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from common import answers
from common import cli
import bench
import bon
from lab import controls
from common import data
from lab import evidence
from common import metrics
from common import model as vlm
import prm
import search
from lab import report
from common import tasks
import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_train=12, n_tune=4, n_dev=4, n_test=6, steps=4, batch_size=8, search_n=2, judges_n=4)
# The aggregations written out here as the reference; one a fork adds to bon.AGGREGATIONS is read from there.
AGG = {"min": min, "mean": lambda s: sum(s) / len(s), "prod": math.prod, "last": lambda s: s[-1],
       "last2": lambda s: sum(s[-2:]) / len(s[-2:]), "last3": lambda s: sum(s[-3:]) / len(s[-3:])}
AGG.update({g: f for g, f in bon.AGGREGATIONS.items() if g not in AGG})
STAGES = ("problems", "pools", "tau", "labels", "train_prm", "train_orm", "train_prm_visual", "train_prm_text",
          "scores", "judges", "search", "labelling", "speed")


def best_of(pairs):
    """Expected correctness of the argmax of [(score or None, correct)] over the whole pool: scores equal to 6
    significant digits tie and split evenly, unscored never picked (all unscored: a random pick). By hand."""
    scored = [(float(f"{s:.6g}"), c) for s, c in pairs if s is not None]
    if not scored:
        return sum(c for _, c in pairs) / len(pairs)
    top = [c for s, c in scored if s == max(s for s, _ in scored)]
    return sum(top) / len(top)


def argmax(pool, scores, agg=None):
    """best_of over a pool with scores {candidate id: float, or step scores aggregated by agg}."""
    pairs = []
    for c in pool:
        s = scores.get(c["id"])
        pairs.append((None if s is None or s == [] else agg(s) if agg else s, float(c["correct"])))
    return best_of(pairs)


def vote(pool, weight):
    """Expected correctness of the answer with the largest summed weight (ties split evenly)."""
    w, right = Counter(), {}
    for c in pool:
        if c["answer"] is None or str(c["answer"]).strip() == "":
            continue
        k = answers.normalize(c["answer"])
        w[k] += float(f"{weight(c):.6g}")  # each vote's weight to 6 significant digits, as every score
        right.setdefault(k, []).append(float(c["correct"]))
    top = [k for k in w if math.isclose(w[k], max(w.values()), rel_tol=1e-9)]
    return sum(sum(right[k]) / len(right[k]) for k in top) / len(top)


def read(out):
    """Everything a run wrote: problems and candidates per split, the scores, the rows, results.json."""
    P = {s: {p["id"]: p for p in data.read_jsonl(out / f"problems_{s}.jsonl", "problem")} for s in bench.SPLITS}
    cands = {f.stem[6:]: data.read_jsonl(f, "candidate") for f in out.glob("cands_*.jsonl")}
    scores = json.loads((out / "scores.json").read_text())["out"]
    rows = [json.loads(line) for line in (out / "per_problem.jsonl").read_text().splitlines()]
    return P, cands, scores, rows, json.loads((out / "results.json").read_text())


def by_problem(cands, ids):
    return {pid: [c for c in cands if c["problem_id"] == pid] for pid in ids}


def stage_files(out):
    return {n: json.loads((out / f"{n}.json").read_text()) for n in STAGES}


def mtimes(out, patterns):
    return {f.name: f.stat().st_mtime_ns for p in patterns for f in sorted(out.glob(p))}


def check_numbers(out, a):
    """results.json against a recomputation from the stage files (the run in `out` made with `a`)."""
    P, cands, scores, rows, saved = read(out)
    meta, rows = rows[0], rows[1:]
    test, S, head = P["test"], scores["test_synthetic"], saved["head"]
    assert meta == {"pool": "meta", "head": head, "kept": saved["filter"]["kept_ids"], "seed": a.seed,
                    "min_clusters": metrics.MIN_CLUSTERS,
                    "judges": {k: saved["judges"][k] for k in ("best", "solver_pair")}}
    assert all(p["split"] == s and tasks.split_of(p) == s for s in bench.SPLITS for p in P[s].values())
    assert saved["pools"] == {"dev_synthetic": a.n_dev * a.pool, "test_synthetic": a.n_test * a.pool,
                              **{f"{s}_base": len(cands[f"{s}_base"]) for s in ("tune", "dev", "test")},
                              **{f"{s}_strong": len(cands[f"{s}_strong"]) for s in ("tune", "dev", "test")}}
    assert all(c["policy"] == a.base for s in ("tune", "dev", "test") for c in cands[f"{s}_base"])
    assert all(c["policy"] == a.strong for s in ("tune", "dev", "test") for c in cands[f"{s}_strong"])
    # the two policies write different answers to the same problems (not one pool under two names)
    assert [c["steps"] for c in cands["test_base"]] != [c["steps"] for c in cands["test_strong"]]
    pools = by_problem(cands["test_synthetic"], test)
    # the aggregation: the best Best-of-16 on the tune split's headline pool (the whole pool: an argmax by hand)
    tune = by_problem(cands["tune_base"], [p for p in P["tune"] if any(c["problem_id"] == p for c in cands["tune_base"])])
    tuned = {g: sum(argmax(pool, scores["tune_base"]["prm"], AGG[g]) for pool in tune.values()) / len(tune)
             for g in bon.AGGS}
    assert saved["tuning"]["aggregation"] == pytest.approx(tuned, abs=1e-12)
    assert head == max(bon.AGGS, key=lambda g: tuned[g])
    # Best-of-16 = the whole pool: each cell the mean over the part's problems of a pick made here by hand
    picks = {"random": lambda pool: sum(c["correct"] for c in pool) / len(pool),
             "oracle": lambda pool: float(any(c["correct"] for c in pool)),
             "majority": lambda pool: vote(pool, lambda c: 1.0),
             "weighted_prm": lambda pool: vote(pool, lambda c: min(S["prm"][c["id"]]) if S["prm"].get(c["id"]) else 0),
             "orm": lambda pool: argmax(pool, S["orm"]), "prm_head": lambda pool: argmax(pool, S["prm"], AGG[head]),
             "key_weighted": lambda pool: argmax(pool, {c["id"]: controls.key_weighted(S["prm"][c["id"]], c["steps"])
                                                        for c in pool if c["id"] in S["prm"]}),
             "chunks_head": lambda pool: argmax(pool, S["prm_chunks"], AGG[head]),
             "base_likelihood_head": lambda pool: argmax(pool, S["base_likelihood"], AGG[head]),
             "prm_text_head": lambda pool: argmax(pool, S["prm_text"], AGG[head]),
             **{f"prm_{g}": lambda pool, g=g: argmax(pool, S["prm"], AGG[g]) for g in bon.AGGS}}
    assert all(S["orm"][i] == s[-1] for i, s in S["orm_steps"].items())  # the ORM's answer score: its last tag
    for part in evidence.PARTS:
        ids = [pid for pid in test if part in ("all", test[pid]["family"])]
        for m, f in picks.items():
            want = sum(f(pools[pid]) for pid in ids) / len(ids)
            assert saved["bon"][part][m]["16"] == pytest.approx(want, abs=1e-12), (part, m)
        for kind in ("base", "strong"):  # the two headline pools
            pool_of = by_problem(cands[f"test_{kind}"], [pid for pid in ids if any(c["problem_id"] == pid
                                                                                  for c in cands[f"test_{kind}"])])
            B = scores[f"test_{kind}"]
            for m, f in {"prm_head": lambda pool: argmax(pool, B["prm"], AGG[head]),
                         "base_likelihood_min": lambda pool: argmax(pool, B["base_likelihood"], min),
                         "orm": lambda pool: argmax(pool, B["orm"]), "majority": lambda pool: vote(pool, lambda c: 1.0),
                         "weighted_prm": lambda pool: vote(pool, lambda c: min(B["prm"][c["id"]]))}.items():
                assert saved[f"bon_{kind}_policy"][part][m]["16"] == pytest.approx(
                    sum(f(pool) for pool in pool_of.values()) / len(pool_of), abs=1e-12), (kind, part, m)
    # the judge table: each judge's pick in each mode on the stronger policy's answers it rated, by hand, and the
    # best judge and mode as dev chose them
    ratings = json.loads((out / "judges.json").read_text())["out"]
    aggregation = {"orm": None, "prm": AGG["mean"], "hybrid": AGG["last2"]}

    def judge_pick(pools, split, name, mode):  # Best-of-16 by one judge in one mode over `pools`
        sets = ratings[split][f"{name}.{'orm' if mode == 'orm' else 'prm'}"]
        return sum(argmax(pool, sets, aggregation[mode]) for pool in pools.values()) / len(pools)
    names = a.judges.split(",")
    assert saved["judges"]["names"] == names
    rated = by_problem(cands["test_strong"], sorted(evidence.judged_ids(list(test.values()), a.judges_n)))
    assert {test[pid]["family"] for pid in rated} == {"text", "visual"}  # both families judged
    assert all(c["id"] in ratings["test"][f"{name}.orm"] for name in names for pool in rated.values() for c in pool)
    for name in names:
        for mode in aggregation:
            assert saved["judges"]["bon"]["all"][f"{name} {mode}"]["16"] == pytest.approx(
                judge_pick(rated, "test", name, mode), abs=1e-12), (name, mode)
    dev_rated = by_problem(cands["dev_strong"], sorted(evidence.judged_ids(list(P["dev"].values()), a.judges_n // 2)))
    dev_acc = {f"{name} {mode}": round(judge_pick(dev_rated, "dev", name, mode), 4)
               for name in names for mode in aggregation}
    assert saved["judges"]["dev_bo16"] == dev_acc
    assert saved["judges"]["dev_reference"]["random"] == round(
        sum(sum(c["correct"] for c in pool) / len(pool) for pool in dev_rated.values()) / len(dev_rated), 4)
    assert " ".join(saved["judges"]["best"]) == max(dev_acc, key=dev_acc.get)
    assert saved["hybrid"]["prm_last2"] == saved["bon"]["all"]["prm_last2"]
    assert saved["segmentation"]["steps_min"] == saved["bon"]["all"]["prm_min"]
    # every cell of every pool: the mean of its per-problem rows, with the bootstrap interval over them (clusters:
    # content) around it
    for pool, parts in saved["intervals"].items():
        for part, methods in parts.items():
            for m, cells in methods.items():
                for n, cell in cells.items():
                    rs = [r for r in rows if r["pool"] == pool and r["method"] == m and n in r["acc"]
                          and part in ("all", r["family"])]
                    want = metrics.bootstrap([r["acc"][n] for r in rs], [r["content"] for r in rs], seed=a.seed)
                    assert {k: cell[k] for k in want} == pytest.approx(want, abs=1e-12), (pool, part, m, n)
                    assert cell["lo"] <= cell["mean"] + 1e-12 and cell["mean"] <= cell["hi"] + 1e-12
    for part in evidence.PARTS:  # "bon" is the synthetic pool's means
        assert saved["bon"][part]["prm_head"] == {n: c["mean"] for n, c in
                                                  saved["intervals"]["synthetic"][part]["prm_head"].items()}
    # accuracy@N below the pool: bon.at_n over the stored candidates and scores, row by row
    pp = bon.make_pools(list(test.values()), cands["test_synthetic"], S)
    rules = evidence.method_sets(head)["synthetic"]
    for r in rows:
        if r["pool"] == "synthetic" and r["method"] in ("prm_head", "orm", "majority", "weighted_prm", "oracle"):
            rule = rules[r["method"]]
            assert r["acc"] == pytest.approx({n: bon.at_n(bon.prepare(pp[r["problem"]], rule), bon.parse_rule(rule)[0],
                                                           int(n), a.seed, r["problem"])[0] for n in r["acc"]}), r
            assert r["content"] == "|".join(map(str, tasks.content_of(test[r["problem"]])))
    # the ViLBench filter: kept on half A (even candidates) at N=8, measured on half B (odd candidates)
    acc = {(r["pool"], r["method"], r["problem"]): r["acc"] for r in rows}
    kept = sorted(p for p in test if acc["half_a", "prm_head", p]["8"] - acc["half_a", "orm", p]["8"] > 1e-12)
    assert saved["filter"] == {"kept": len(kept), "of": len(test), "kept_ids": kept}
    for pid in test:
        odd = [c for c in pools[pid] if int(c["id"][-2:]) % 2 == 1]
        assert len(odd) == a.pool // 2 and acc["half_b", "orm", pid]["8"] == pytest.approx(argmax(odd, S["orm"]))
    # paired comparisons: the difference of the rows, its interval; the verdicts follow from them
    comps = saved["comparisons"]
    d = [acc["synthetic", "prm_head", p]["16"] - acc["synthetic", "orm", p]["16"] for p in sorted(test)]
    want = metrics.bootstrap(d, [evidence.content(test[p]) for p in sorted(test)], seed=a.seed)
    assert {k: comps["prm_vs_orm"][k] for k in want} == pytest.approx(want, abs=1e-12)
    assert comps["prm_vs_orm"]["mean"] == pytest.approx(
        saved["bon"]["all"]["prm_head"]["16"] - saved["bon"]["all"]["orm"]["16"], abs=1e-12)
    on = sorted(p for p in test if ("base", "prm_head", p) in acc)  # the headline: the base's own answers
    d = [acc["base", "prm_head", p]["16"] - acc["base", "base_likelihood_min", p]["16"] for p in on]
    want = metrics.bootstrap(d, [evidence.content(test[p]) for p in on], seed=a.seed)
    assert {k: comps["headline_prm_vs_base_likelihood"][k] for k in want} == pytest.approx(want, abs=1e-12)
    assert [v["finding"] for v in saved["verdicts"]] == [f for f, _, _ in evidence.FINDINGS]
    assert saved["verdicts"] == evidence.verdicts(comps)
    assert {v["verdict"] for v in saved["verdicts"]} <= {"holds", "opposite", "not resolved", "too few", "not run"}
    widths = sorted((c["hi"] - c["lo"]) / 2 for c in comps.values())
    assert saved["resolvable"] == round(widths[len(widths) // 2], 4)
    # first-error F1: the threshold chosen on the dev pool's scores, the F1 measured on the test pool's
    f1s = {}
    for name, key, pool in (("prm", "prm", "synthetic"), ("orm", "orm_steps", "synthetic"),
                            ("prior", "prior", "synthetic"), ("prm@base", "prm", "base"),
                            ("base_likelihood@base", "base_likelihood", "base"), ("prm@strong", "prm", "strong"),
                            ("orm@strong", "orm_steps", "strong")):
        part = lambda cs, sc: ([sc[c["id"]] for c in cs if c["id"] in sc],  # noqa: E731
                               [c["first_error"] for c in cs if c["id"] in sc])
        t = metrics.choose_threshold(*part(cands[f"dev_{pool}"], scores[f"dev_{pool}"][key]))
        f1 = metrics.first_error_f1(*part(cands[f"test_{pool}"], scores[f"test_{pool}"][key]), t)
        st = saved["step"][name]
        assert (st["threshold"], st["first_error_f1"], st["acc_error"], st["acc_correct"], st["n"]) == (
            t, round(f1["f1"], 4), f1["acc_error"], f1["acc_correct"],
            len(part(cands[f"test_{pool}"], scores[f"test_{pool}"][key])[0]))
        assert st["lo"] <= f1["f1"] <= st["hi"]
        f1s[name] = f1["f1"]
    assert comps["headline_f1_prm_vs_base_likelihood"]["mean"] == pytest.approx(
        f1s["prm@base"] - f1s["base_likelihood@base"], abs=1e-12)  # paired over the same answers
    assert comps["strong_f1_prm_vs_orm"]["mean"] == pytest.approx(f1s["prm@strong"] - f1s["orm@strong"], abs=1e-12)
    steps = [json.loads(line) for line in (out / "per_step.jsonl").read_text().splitlines()]
    fe = [s for s in steps if s["metric"] == "first_error" and s["key"] == "prm"]
    assert metrics.first_error_f1_ci([s["pred"] for s in fe], [s["true"] for s in fe])["mean"] == pytest.approx(
        saved["step"]["prm"]["first_error_f1"], abs=5e-5)
    assert saved["controls"]["fresh_auc"]["prm"] == pytest.approx(
        controls.fresh_auc(cands["test_synthetic"], test, S["prm"]), abs=5e-5)
    # the stored PRM scores are the trained PRM's (4 answers scored again here, in another batch)
    m, p = prm.load(str(out / "prm"), device="cpu")
    cs = cands["test_synthetic"][:4]
    again, _ = prm.score_steps(m, p, [tasks.render(test[c["problem_id"]]) for c in cs],
                               [test[c["problem_id"]]["question"] for c in cs], [c["steps"] for c in cs])
    assert [S["prm"][c["id"]] for c in cs] == again  # to the last bit: a batch does not move an answer's scores
    return saved


def test_bench_small_run_recomputed_cached_and_relabelled(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # six test problems: intervals anyway, to check them
    a = bench.Args(out=str(tmp_path), **SMALL)
    res = bench.main(a)
    saved = check_numbers(tmp_path, a)
    assert saved == json.loads(json.dumps(res))
    labels = data.read_jsonl(tmp_path / "labels.jsonl", "labelled")
    assert saved["labelling"]["train_labels"]["records"] == len(labels) > 0
    assert {r["meta"]["method"] for r in labels} == {"mcts"}
    assert len(labels) == sum(len(data.read_jsonl(tmp_path / f"labels_{f}.jsonl", "labelled"))
                              for f in ("visual", "text"))
    assert (tmp_path / "report.md").read_text().startswith("# Bench report")
    assert (tmp_path / "bon_curve.png").read_bytes()[:4] == b"\x89PNG"
    # the step search on the first search_n test problems: its table, plot and the two comparisons its findings read
    assert saved["search"]["problems"] == a.search_n and "prm b=2" in saved["search"]["search"]
    assert (tmp_path / "search.png").read_bytes()[:4] == b"\x89PNG" and "Step search at test time" in \
        (tmp_path / "report.md").read_text()
    rows = json.loads((tmp_path / "search.json").read_text())["out"]
    assert saved["comparisons"]["search_prm_vs_orm"] == json.loads(json.dumps(
        search.compare(rows, "prm b=2", "orm b=2", seed=a.seed, adjusted=evidence.adjusted_level())))
    found = {v["finding"]: v for v in saved["verdicts"]}
    assert found["step search: a PRM guides the policy better than an ORM read on the prefix"]["comparisons"] == [
        "search_prm_vs_orm"]
    # evidence.py redoes a comparison from the kept rows alone: the same difference and interval as results.json
    out = subprocess.run([sys.executable, "-m", "lab.evidence", str(tmp_path / "per_problem.jsonl"), "--a",
                          "prm_head", "--b", "orm", "--pool", "synthetic"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    c = saved["comparisons"]["prm_vs_orm"]
    assert (f"prm_head - orm at N=16 (synthetic, all, {c['n']} problems): {evidence.said(c)} "
            f"-> {metrics.verdict(c)}") in out.stdout.splitlines()
    every = subprocess.run([sys.executable, "-m", "lab.evidence", str(tmp_path / "per_problem.jsonl")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})  # + per_step.jsonl: F1 rows
    assert every.returncode == 0, every.stderr
    for k, c in saved["comparisons"].items():
        if k.startswith("search_"):  # read off the step search's rows (OUT/search.json), not the per-problem rows
            continue
        assert f"{k:38s} {evidence.said(c)}  n={c['n']}  {metrics.verdict(c)}" in every.stdout, k
    # a rerun with nothing changed recomputes nothing: no stage file rewritten, the same numbers
    before, files = stage_files(tmp_path), mtimes(tmp_path, ["*.json", "*.jsonl", "*/model.safetensors"])
    capsys.readouterr()
    again = bench.main(a)
    printed = capsys.readouterr().out
    assert not [line for line in printed.splitlines() if line.startswith("[bench]")], printed
    assert stage_files(tmp_path) == before
    assert {k: v for k, v in mtimes(tmp_path, ["*.json", "*.jsonl", "*/model.safetensors"]).items()
            if k not in ("results.json", "per_problem.jsonl", "per_step.jsonl")} == {
        k: v for k, v in files.items() if k not in ("results.json", "per_problem.jsonl", "per_step.jsonl")}
    same = lambda r: json.loads(json.dumps({k: v for k, v in r.items() if not k.startswith("seconds")}))  # noqa: E731
    assert same(again) == same(res)
    assert again["seconds"] >= round(sum(s["seconds"] for s in before.values()), 1) - 0.05  # the whole pipeline's
    # --labels mc (everything else equal) really relabels: tau, labels, the four reward models and what reads
    # them are recomputed; the problems and the pools are reused, their files untouched
    kept = mtimes(tmp_path, ["problems*.json*", "pools.json", "cands_*.jsonl", "images/*.png"])
    models = mtimes(tmp_path, ["*/model.safetensors"])
    mc = bench.main(dataclasses.replace(a, labels="mc"))
    after = stage_files(tmp_path)
    assert [n for n in STAGES if after[n]["key"] == before[n]["key"]] == ["problems", "pools", "judges"]
    assert mtimes(tmp_path, ["problems*.json*", "pools.json", "cands_*.jsonl", "images/*.png"]) == kept
    assert after["labels"]["settings"]["labels"] == after["tau"]["settings"]["labels"] == "mc"
    labels = data.read_jsonl(tmp_path / "labels.jsonl", "labelled")
    assert labels and {r["meta"]["method"] for r in labels} == {"mc"}
    assert all(mtimes(tmp_path, ["*/model.safetensors"])[k] > t for k, t in models.items())  # retrained
    assert mc["config"]["labels"] == "mc" and "on mc labels" in (tmp_path / "report.md").read_text()
    assert mc["labelling"]["train_labels"]["records"] == len(labels)


def test_bench_seeds_pool_two_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # a few test problems: intervals anyway, to check them
    a = bench.Args(out=str(tmp_path), seeds="0,1", pool=8, **{**SMALL, "n_test": 4, "n_dev": 2, "n_tune": 2,
                                                              "n_train": 8})
    res = bench.main(a)
    per = {s: json.loads((tmp_path / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)}
    assert [per[s]["config"]["seed"] for s in (0, 1)] == [0, 1]
    tests = [(tmp_path / f"seed-{s}" / "problems_test.jsonl").read_text() for s in (0, 1)]
    assert tests[0] != tests[1]  # independent problems
    heads = {str(s): report.headline(per[s]) for s in (0, 1)}
    assert res["seeds"]["per_seed"] == json.loads(json.dumps(heads))
    for k, v in res["seeds"]["spread"].items():
        x = [heads[s][k] for s in heads]
        assert v == pytest.approx({"mean": sum(x) / 2, "std": statistics.stdev(x)}, abs=5.1e-5), k
    # pooled: every seed's test problems (the same number per family in each), so a cell is the seeds' mean
    for part in evidence.PARTS:
        for m in ("random", "majority", "orm", "prm_head", "oracle"):
            for n in ("1", "4", "16"):
                assert res["bon"][part][m][n] == pytest.approx((per[0]["bon"][part][m][n] + per[1]["bon"][part][m][n])
                                                               / 2, abs=1e-12), (part, m, n)
    rows = [json.loads(line) for line in (tmp_path / "per_problem.jsonl").read_text().splitlines()][1:]
    one = [json.loads(line) for line in (tmp_path / "seed-0" / "per_problem.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2 * len(one) and {r["problem"][:3] for r in rows} == {"s0/", "s1/"}
    assert res["comparisons"]["prm_vs_orm"]["n"] == 2 * per[0]["comparisons"]["prm_vs_orm"]["n"] == 2 * a.n_test
    # the first-error F1 rows are pooled by (seed, candidate): the seeds' candidate ids are the same strings
    f1 = "headline_f1_prm_vs_orm"
    assert res["comparisons"][f1]["n"] == per[0]["comparisons"][f1]["n"] + per[1]["comparisons"][f1]["n"]
    assert res["step"]["prm@base"]["n"] == per[0]["step"]["prm@base"]["n"] + per[1]["step"]["prm@base"]["n"]


def test_stages_recompute_on_a_changed_setting_and_downstream(tmp_path, capsys):
    calls = []

    def make(tag):
        return lambda: calls.append(tag) or {"made": tag}
    st = bench.Stages(tmp_path)
    assert st.run("a", {"x": 1}, make("a1")) == {"made": "a1"}
    assert st.run("b", {"y": 1}, make("b1"), after=("a",), seconds=7.5) == {"made": "b1"}
    stored = json.loads((tmp_path / "b.json").read_text())
    assert stored["settings"] == {"y": 1} and stored["out"] == {"made": "b1"} and stored["seconds"] == 7.5
    # a new run with the same settings: both reused, make() not called
    st = bench.Stages(tmp_path)
    assert st.fresh("a", {"x": 1}) and not st.fresh("a", {"x": 2})
    assert st.run("a", {"x": 1}, make("a2")) == {"made": "a1"}
    assert st.fresh("b", {"y": 1}, ("a",)) and st.run("b", {"y": 1}, make("b2"), ("a",)) == {"made": "b1"}
    assert calls == ["a1", "b1"] and st.this_run == 0
    assert st.seconds() == json.loads((tmp_path / "a.json").read_text())["seconds"] + 7.5
    # a's setting changes: a is recomputed, and b (its own settings unchanged) because a came before it
    capsys.readouterr()
    st = bench.Stages(tmp_path)
    assert st.run("a", {"x": 2}, make("a3")) == {"made": "a3"}
    assert "a: settings or an earlier stage changed {'x': (1, 2)}: recomputing" in capsys.readouterr().out
    assert not st.fresh("b", {"y": 1}, ("a",))
    assert st.run("b", {"y": 1}, make("b3"), ("a",)) == {"made": "b3"}
    assert "b: settings or an earlier stage changed (upstream): recomputing" in capsys.readouterr().out
    # only b's setting changes: a reused, b recomputed
    st = bench.Stages(tmp_path)
    assert st.run("a", {"x": 2}, make("a4")) == {"made": "a3"}
    assert st.run("b", {"y": 2}, make("b4"), ("a",)) == {"made": "b4"}
    assert calls == ["a1", "b1", "a3", "b3", "b4"]
    # a stage that does not come after a is not touched by a's change
    st = bench.Stages(tmp_path)
    assert st.run("c", {"z": 0}, make("c1")) == {"made": "c1"}
    st = bench.Stages(tmp_path)
    st.run("a", {"x": 3}, make("a5"))
    assert st.run("c", {"z": 0}, make("c2")) == {"made": "c1"}


def test_launch_passes_every_train_setting_as_flags_train_parses_back(tmp_path, monkeypatch):
    a = bench.Args(out=str(tmp_path), steps=30, lr=2e-4, batch_size=4, seed=3, head="tag", beta=0.25, base="tiny")
    st = bench.Stages(tmp_path)
    args = {n: bench.train_args(a, st, n) for n in bench.MODELS}
    assert {n: (x.objective, Path(x.data).name) for n, x in args.items()} == {
        "prm": ("prm", "labels.jsonl"), "orm": ("orm", "labels.jsonl"), "prm_visual": ("prm", "labels_visual.jsonl"),
        "prm_text": ("prm", "labels_text.jsonl")}
    args["odd"] = dataclasses.replace(args["prm"], resume=True, grad_ckpt=True, ckpt_frac=0.5, attn="sdpa",
                                      out=str(tmp_path / "odd"))  # flags of both bools and a float
    seen = []

    def fake_run(cmd, stdout, stderr, env):
        seen.append((cmd, env["OMP_NUM_THREADS"]))
        stdout.write("trained\n")
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    for n, x in args.items():
        (Path(x.out) / "last").mkdir(parents=True)  # a model made with other settings: removed before training
        bench.launch(x, tmp_path / f"{n}.log")
        cmd, threads = seen[-1]
        assert cmd[:2] == [sys.executable, str(vlm.ROOT / "train.py")] and threads == "1"
        assert cli.parse_args(train.Args, cmd[2:]) == x, n
        assert not Path(x.out).exists() and (tmp_path / f"{n}.log").read_text() == "trained\n"
    assert "--resume" in seen[-1][0] and "--no-compile" in seen[-1][0]
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 2))
    with pytest.raises(RuntimeError, match=r"failed \(exit 2\): see .*prm\.log"):
        bench.launch(args["prm"], tmp_path / "prm.log")


def test_the_label_policy_names_its_writer_and_the_stages_key_it(monkeypatch):
    made = []
    monkeypatch.setattr(bench, "VLMPolicy", lambda name, temperature, batch_size: made.append(name) or name)
    a = bench.Args(base="tiny", strong="some-writer")
    assert bench.label_policy(a) == "tiny" and bench.label_writer(a) == {"policy": "base"}
    strong = dataclasses.replace(a, label_policy="strong")
    assert bench.label_policy(strong) == "some-writer"
    assert bench.label_writer(strong) == {"policy": "strong", "strong": "some-writer"}  # another writer: not cached
    assert isinstance(bench.label_policy(dataclasses.replace(a, label_policy="synthetic")), bench.SyntheticPolicy)
    assert made == ["tiny", "some-writer"]
    with pytest.raises(ValueError, match="--label-policy"):
        bench.label_policy(dataclasses.replace(a, label_policy="other"))


def test_the_sweep_reads_both_tune_pools_at_the_aggregation_chosen_on_the_base(tmp_path, monkeypatch):
    def fake_run(a):  # each point's tune numbers, made up: the base's best aggregation differs by point
        base = {"min": 0.5, "mean": 0.6} if a.label_policy == "base" else {"min": 0.7, "mean": 0.4}
        return {"tune_bon16": base, "tune_bon16_strong": {"min": 0.81, "mean": 0.83}}, [], [], []
    monkeypatch.setattr(bench, "run", fake_run)
    res = bench.run_sweep(bench.Args(out=str(tmp_path), sweep="label_policy=base,strong"))
    assert [(p["label_policy"], p["best_aggregation"]) for p in res["points"]] == [("base", "mean"), ("strong", "min")]
    table = (tmp_path / "tuning_label_policy.md").read_text().splitlines()
    assert "| base | 0.600 (mean) | 0.830 |" in table and "| strong | 0.700 (min) | 0.810 |" in table
    assert json.loads((tmp_path / "tuning_label_policy.json").read_text())["points"] == res["points"]
