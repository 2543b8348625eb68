"""The reproduction: the whole pipeline on the synthetic suite, with the paper's tables.

    python bench.py                  # default run (~10 min, 2 CPU cores): out/bench/{results.json, report.md, ...}
    python bench.py --quick          # reduced run (~2 min): a smoke run, its reward models undertrained
    python bench.py --readme         # also write the headline tables into README.md and copy the outputs to results/
    python bench.py --gpu            # one-GPU speed of a 3B-shaped PRM (speed.py): tokens/s, MFU, memory

Stages, each cached under --out (a rerun skips finished ones; delete a file to redo its stage):
problems (train/dev/test) -> candidate pools for dev/test (synthetic weak+strong, and the tiny base sampled at a
temperature) -> tree-search labels of the train problems (MCTS, synthetic policy) -> PRM and ORM fine-tuned from the
shipped tiny base (--head implicit: the log-likelihood ratio to the base, read at the tags; --head tag: "+"/"-" at
the tags, which at this budget learns far slower, see README) -> scores (PRM, ORM, judge PRM/ORM, controls) ->
Best-of-N, first-error F1, labelling cost, speed, segmentation. The last stdout line is one JSON object with the
headline numbers.
"""
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import bon
import controls as C
import data
import judge
import metrics
import model as M
import orm
import prm
import report as R
import speed
import steps
import tasks
import train
import tree_search


@dataclass
class Args:
    out: str = field(default="out/bench", metadata={"help": "output folder (stages cached here)"})
    quick: bool = field(default=False, metadata={"help": "reduced run, ~3 CPU minutes"})
    gpu: bool = field(default=False, metadata={"help": "run the one-GPU speed benchmark (speed.py) instead"})
    seed: int = field(default=0, metadata={"help": "seed of problems, pools, labels, training, subsets"})
    base: str = field(default="tiny", metadata={"help": "the base model the reward models start from"})
    n_train: int = field(default=2000, metadata={"help": "train problems (tree-search labels)"})
    n_dev: int = field(default=60, metadata={"help": "dev problems (thresholds)"})
    n_test: int = field(default=160, metadata={"help": "test problems (Best-of-N)"})
    pool: int = field(default=16, metadata={"help": "candidates per problem and policy"})
    labels: str = field(default="mcts", metadata={"help": "train labels: mcts | mc (tree search) | oracle (tasks.py)"})
    rollouts: int = field(default=16, metadata={"help": "tree search: K rollouts per value estimate"})
    samples: int = field(default=4, metadata={"help": "tree search: sampled solutions labelled per problem"})
    head: str = field(default="implicit", metadata={"help": "PRM / ORM head: implicit (log-likelihood ratio to the base, read at the tags) | tag (+/- at each tag)"})
    beta: float = field(default=0.1, metadata={"help": "implicit head: scale of the log-likelihood ratio"})
    steps: int = field(default=1200, metadata={"help": "PRM / ORM fine-tuning steps"})
    lr: float = field(default=1e-3, metadata={"help": "PRM / ORM learning rate"})
    batch_size: int = field(default=32, metadata={"help": "PRM / ORM batch size"})
    judge_n: int = field(default=32, metadata={"help": "test problems scored by the judge PRM/ORM (slow)"})
    temperature: float = field(default=1.0, metadata={"help": "tiny-base policy sampling temperature"})
    draws: int = field(default=8, metadata={"help": "Best-of-N subset draws per problem and N"})
    readme: bool = field(default=False, metadata={"help": "write the headline tables into README.md (between markers)"})


SCORE_BATCH, GEN_BATCH = 32, 64  # answers per scoring pass, solutions per generate call
QUICK = dict(n_train=300, n_dev=24, n_test=40, steps=200, judge_n=8, draws=4)


def cached(path, make):
    """Run `make` unless `path` exists; JSON in, JSON out."""
    path = Path(path)
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.time()
    out = make()
    path.write_text(json.dumps(out))
    record_time(path.parent, path.name, time.time() - t0)
    return out


STAGE_SECONDS = {"this_run": 0.0}  # the stages computed by this process (not read from the cache)


def record_time(out, stage, seconds):
    """Keep each stage's compute time in OUT/timings.json: a rerun over the cache still reports the whole pipeline."""
    f = out / "timings.json"
    t = json.loads(f.read_text()) if f.exists() else {}
    t[stage] = round(seconds, 1)
    f.write_text(json.dumps(t, indent=1))
    STAGE_SECONDS["this_run"] += seconds
    print(f"[bench] {stage}: {seconds:.0f}s")


def pipeline_seconds(out, t0):
    """The whole pipeline's time: every stage's recorded compute time plus this run's time outside the stages."""
    stages = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    return round(sum(stages.values()) + time.time() - t0 - STAGE_SECONDS["this_run"], 1)


def stage_problems(a, out):
    def make():
        (out / "images").mkdir(parents=True, exist_ok=True)
        res = {}
        for split, n in (("train", a.n_train), ("dev", a.n_dev), ("test", a.n_test)):
            probs = tasks.make_problems(n, a.seed, split)
            for p in probs:
                tasks.render(p).save(out / "images" / f"{p['id']}.png")
                p["image"] = f"images/{p['id']}.png"
            data.write_jsonl(out / f"problems_{split}.jsonl", probs, "problem")
            res[split] = len(probs)
        return res
    cached(out / "problems.done", make)
    return {s: data.read_jsonl(out / f"problems_{s}.jsonl", "problem") for s in ("train", "dev", "test")}


def base_policy_pool(a, probs, model, processor):
    """The tiny base's own answers, sampled at a temperature: a real model's mistakes, not the sampler's."""
    jobs = [(p, j) for p in probs for j in range(a.pool)]
    cands = []
    for b in range(0, len(jobs), GEN_BATCH):
        chunk = jobs[b:b + GEN_BATCH]
        sols = M.solve(model, processor, [tasks.render(p) for p, _ in chunk], [p["question"] for p, _ in chunk],
                       temperature=a.temperature, seed=tasks.seed_of(a.seed, "base-pool", b))
        for (p, j), s in zip(chunk, sols):
            steps, ans = s["steps"], s["answer"]
            cands.append({"id": f"{p['id']}-b{j:02d}", "problem_id": p["id"], "steps": steps, "answer": ans,
                          "correct": tasks.match_answer(ans, p["answer"]), "policy": "tiny-base", "text": s["text"],
                          "first_error": tasks.first_error(p, steps) if steps else None})
    return [c for c in cands if c["steps"]]


def stage_pools(a, out, P, model, processor):
    """Pools of `pool` candidates per dev/test problem: "synthetic" (half weak, half strong sampler) and "base"."""
    def make():
        res = {}
        for split in ("dev", "test"):
            syn = [c for p in P[split] for s in ("weak", "strong") for c in tasks.candidates(p, a.pool // 2, a.seed, s)]
            data.write_jsonl(out / f"cands_{split}_synthetic.jsonl", syn, "candidate")
            basec = base_policy_pool(a, P[split], model, processor)
            data.write_jsonl(out / f"cands_{split}_base.jsonl", basec, "candidate")
            res[split] = {"synthetic": len(syn), "base": len(basec)}
        return res
    cached(out / "pools.done", make)
    return {(s, k): data.read_jsonl(out / f"cands_{s}_{k}.jsonl", "candidate")
            for s in ("dev", "test") for k in ("synthetic", "base")}


def stage_labels(a, out, P):
    def make():
        if a.labels == "oracle":  # the oracle's exact labels: an upper bound on what tree search can give
            recs = [{**tasks.labelled(p, c, p["image"]), "meta": {"correct": c["correct"]}}
                    for p in P["train"] for c in tasks.candidates(p, a.samples, a.seed)]
            st = {"records": len(recs), "rollouts": 0, "rollouts_per_solution": 0.0}
        else:
            recs, st = tree_search.label(P["train"], tree_search.SyntheticPolicy(), a.labels, a.rollouts, 0, a.seed,
                                         a.samples, progress=True)
        data.write_jsonl(out / "labels.jsonl", recs, "labelled")
        return st
    return cached(out / "labels.done", make)


def stage_train(a, out, objective):
    ck = out / objective
    want = dict(model=a.base, max_steps=a.steps, lr=a.lr, batch_size=a.batch_size, seed=a.seed, head=a.head,
                beta=a.beta)
    if (ck / "train_config.json").exists():  # a cached model must be the one these settings ask for
        have = json.loads((ck / "train_config.json").read_text())
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            raise SystemExit(f"{ck} was trained with other settings {diff} (cached, wanted); "
                             "delete it or use another --out")
    if not (ck / "config.json").exists():
        t0 = time.time()
        train.main(train.Args(objective=objective, data=str(out / "labels.jsonl"), out=str(ck), warmup=a.steps // 10,
                              eval_every=a.steps, save_every=a.steps, **want))
        record_time(out, f"train_{objective}", time.time() - t0)
    return str(ck)


def judged_ids(problems, n):
    """The problems the (slow) judges score: the first n/2 of each family, so both families have judge numbers."""
    fams = sorted({p["family"] for p in problems})
    per = -(-n // len(fams))
    return {p["id"] for f in fams for p in [q for q in problems if q["family"] == f][:per]}


def stage_scores(a, out, P, pools, ck):
    """Score sets per (split, pool): {key: {candidate id: step scores or a float}}."""
    res = {}
    label_recs = data.read_jsonl(out / "labels.jsonl", "labelled")
    prior = C.prior_table(label_recs)
    models = {name: M.load(path) for name, path in (("prm", ck["prm"]), ("orm", ck["orm"]),
                                                                   ("base", a.base))}
    for (split, pool), cands in pools.items():
        if (split, pool) == ("dev", "base"):
            continue  # nothing reads it
        probs = {p["id"]: p for p in P[split]}
        ims = [tasks.render(probs[c["problem_id"]]) for c in cands]
        qs = [probs[c["problem_id"]]["question"] for c in cands]
        st = [c["steps"] for c in cands]
        ids = [c["id"] for c in cands]

        def keyed(scores):
            return {i: s for i, s in zip(ids, scores) if s is not None}
        sets = {}
        def score(name, images=ims, steps=st, progress=False):
            return prm.score_steps(*models[name], images, qs, steps, batch_size=SCORE_BATCH, progress=progress)[0]
        sets["prm"] = keyed(score("prm", progress=True))
        orm_steps = score("orm")
        sets["orm"] = keyed(orm.from_steps(orm_steps))
        sets["orm_steps"] = keyed(orm_steps)  # the ORM read at every tag, for first-error F1
        if pool == "base":  # Best-of-N on the base's own answers reads the PRM and the ORM only
            res[f"{split}_{pool}"] = sets
            continue
        sets["prm_blank"] = keyed(score("prm", images=C.blank(ims)))
        sets["prior"] = keyed(C.prior_scores(prior, st))
        sets["base_likelihood"] = keyed(C.step_likelihood(*models["base"], ims, qs, st))
        if split == "test":
            for how in ("chunks", "pairs"):
                sets[f"prm_{how}"] = keyed(score("prm", steps=[steps.segment(s, how) for s in st]))
            judged = judged_ids(P["test"], a.judge_n)
            sel = [i for i, c in enumerate(cands) if c["problem_id"] in judged]
            js, _ = judge.judge_steps(*models["base"], [ims[i] for i in sel], [qs[i] for i in sel], [st[i] for i in sel])
            sets["judge_prm"] = {ids[i]: s for i, s in zip(sel, js)}
            jo, _ = judge.judge_answers(*models["base"], [ims[i] for i in sel], [qs[i] for i in sel], [st[i] for i in sel])
            sets["judge_orm"] = {ids[i]: s for i, s in zip(sel, jo)}
        res[f"{split}_{pool}"] = sets
    return res


def bon_tables(P, cands, sets, methods, a, split="test"):
    """accuracy@N (mean over subsets) overall and per family for one pool."""
    fam = {p["id"]: p["family"] for p in P[split]}
    pools = bon.make_pools(P[split], cands, sets)
    parts = {"all": pools, **{f: {k: v for k, v in pools.items() if fam[k] == f} for f in ("text", "visual")}}
    return {part: bon.means(bon.accuracy_at_n(pp, methods, bon.NS, a.draws, a.seed)) for part, pp in parts.items()
            if pp}


def first_error_table(P, pools, scores, judged):
    """ProcessBench F1 on test, the threshold chosen on dev (judge: on half of the judged test problems)."""
    out = {}
    for key, name in (("prm", "prm"), ("orm_steps", "orm"), ("prm_blank", "prm_blank"), ("prior", "prior"),
                      ("base_likelihood", "base_likelihood")):
        dev, test = ([(scores[f"{s}_synthetic"][key][c["id"]], c["first_error"]) for c in pools[(s, "synthetic")]
                      if c["id"] in scores[f"{s}_synthetic"][key]] for s in ("dev", "test"))
        r = metrics.dev_test_f1(*zip(*dev), *zip(*test))
        out[name] = {"first_error_f1": round(r["first_error_f1"], 4), "threshold": r["threshold"],
                     "acc_error": r["acc_error"], "acc_correct": r["acc_correct"]}
    jp = bon.make_pools([p for p in P["test"] if p["id"] in judged], pools[("test", "synthetic")],
                        {"judge_prm": scores["test_synthetic"]["judge_prm"]})
    r = bon.step_f1(jp, "judge_prm")
    out["judge_prm"] = {"first_error_f1": round(r["first_error_f1"], 4), "threshold": r["threshold"],
                        "acc_error": r["acc_error"], "acc_correct": r["acc_correct"]}
    return out


def selection_tables(a, P, pools, scores):
    """Best-of-N (main pool, judged subset, base pool), hybrid, controls and segmentation tables from the scores."""
    judged, S, cands = judged_ids(P["test"], a.judge_n), scores["test_synthetic"], pools[("test", "synthetic")]
    main_rules = {k: v for k, v in bon.METHODS.items() if not k.startswith("judge")}
    res_bon = bon_tables(P, cands, S, main_rules, a)
    judge_rules = {k: bon.METHODS[k] for k in ("random", "majority", "orm", "prm_min", "prm_mean", "judge_orm",
                                               "judge_prm", "oracle")}
    res_judge = bon_tables({**P, "test": [p for p in P["test"] if p["id"] in judged]}, cands, S, judge_rules, a)
    for part in res_bon:  # the judge methods only where the judge ran (judge_n test problems)
        res_bon[part].update({k: res_judge[part][k] for k in ("judge_orm", "judge_prm")})
    hybrid_rules = {**{f"prm_{g}": f"max:prm:{g}" for g in ("min", "mean", "last", "last2", "last3")},
                    "orm": "max:orm"}
    base_cands = pools[("test", "base")]
    probs = {p["id"]: p for p in P["test"]}
    ctrl_keys = ("prm", "prm_blank", "prior", "base_likelihood", "orm_steps")
    # segmentation: the same answers cut three ways; key-step against equal weights
    segs = {"steps": "prm", "chunks": "prm_chunks", "pairs": "prm_pairs"}
    seg_sets = {**S, "prm_key": {c["id"]: C.key_weighted(S["prm"][c["id"]], c["steps"]) for c in cands
                                 if c["id"] in S["prm"]}}
    seg_rules = {**{f"{n}_min": f"max:{k}:min" for n, k in segs.items()},
                 **{f"{n}_mean": f"max:{k}:mean" for n, k in segs.items()},
                 "key_weighted": "max:prm_key", "equal_weights": "max:prm:mean"}
    acc = lambda f, m, n="16": res_bon[f][m][n]  # noqa: E731
    return {
        "bon": res_bon, "bon_judged_subset": res_judge, "hybrid": bon_tables(P, cands, S, hybrid_rules, a)["all"],
        "bon_base_policy": bon_tables(P, base_cands, scores["test_base"], main_rules, a) if base_cands else {},
        "step": first_error_table(P, pools, scores, judged),
        "controls": {"fresh_auc": {k: C.fresh_auc(cands, probs, S[k]) for k in ctrl_keys},
                     "bon": bon_tables(P, cands, S, {k: f"max:{k}:min" for k in ctrl_keys}, a)["all"]},
        "segmentation": bon_tables(P, cands, seg_sets, seg_rules, a)["all"],
        "gain_over_one_sample": {f: {m: round(acc(f, m) - acc(f, "random", "1"), 4) for m in
                                     ("majority", "weighted_prm", "orm", "prm_min", "prm_mean", "oracle")}
                                 for f in ("text", "visual")}}


def write_outputs(results, a, out):
    """results.json, the plot, report.md (printed); with --readme the README block and a copy in results/."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = R.report(results, a, R.plot(results["bon"]["all"], out / "bon_curve.png"))
    (out / "report.md").write_text(text)
    print(text)
    if a.readme:
        R.update_readme(results, a)
        (M.ROOT / "results").mkdir(exist_ok=True)
        for f in ("results.json", "report.md", "bon_curve.png"):
            if (out / f).exists():
                shutil.copy(out / f, M.ROOT / "results" / f)


def headline(results):
    """The last stdout line: the headline numbers as one JSON object."""
    b, step = results["bon"]["all"], results["step"]
    best = max((m for m in b if m.startswith("prm_")), key=lambda m: b[m]["16"])
    return {"seconds": results["seconds"], "best_prm": best, "best_prm@16": round(b[best]["16"], 4),
            **{f"{m}@16": round(b[m]["16"], 4) for m in ("weighted_prm", "orm", "majority", "oracle")},
            "random@1": round(b["random"]["1"], 4), "prm_f1": step["prm"]["first_error_f1"],
            "orm_f1": step["orm"]["first_error_f1"]}


def main(a: Args):
    if a.gpu:
        return speed.main(speed.Args())
    if a.quick:
        a = Args(**{**asdict(a), **QUICK})
    t0, out = time.time(), Path(a.out)
    STAGE_SECONDS["this_run"] = 0.0
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    P = stage_problems(a, out)
    pools = stage_pools(a, out, P, *M.load(a.base))
    label_stats = stage_labels(a, out, P)
    ck = {o: stage_train(a, out, o) for o in ("prm", "orm")}
    scores = cached(out / "scores.json", lambda: stage_scores(a, out, P, pools, ck))
    labelling = cached(out / "labelling.json", lambda: tree_search.evaluate(200 if a.quick else 500, a.seed, a.rollouts))
    spd = cached(out / "speed.json", lambda: speed.single_pass_vs_prefixes(ck["prm"], P["test"],
                                                                         pools[("test", "synthetic")]))
    tables = selection_tables(a, P, pools, scores)
    results = {"config": asdict(a), "seconds": pipeline_seconds(out, t0), "seconds_this_run": round(time.time() - t0, 1),
               **tables, "labelling": {**labelling, "train_labels": label_stats}, "speed": spd,
               "pools": {f"{s}_{k}": len(v) for (s, k), v in pools.items()}}
    write_outputs(results, a, out)
    print(json.dumps(headline(results)))
    return results


if __name__ == "__main__":
    main(M.parse_args(Args, doc=__doc__))
