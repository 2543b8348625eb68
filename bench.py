"""The reproduction: the whole pipeline on the synthetic suite, the paper's tables with 95% intervals, and a verdict
for each of the paper's findings.

    python bench.py                  # default run (~12 min, 2 CPU cores): out/bench/{results.json, report.md, ...}
    python bench.py --quick          # smoke run (~5 min): every stage on a few problems, numbers not evidence
    python bench.py --seeds 0,1,2    # the pipeline once per seed (out/bench/seed-K), each number as mean and spread
    python bench.py --readme         # also write the headline tables into README.md and copy the outputs to results/
    python bench.py --gpu            # one-GPU speed of a 3B-shaped PRM (lab/speed.py): tokens/s, MFU, memory

Evidence (docs/DESIGN.md): problems are split by content (tasks.SPLITS: train, tune, dev, test never share a content, and
the tiny base saw train contents only). Every choice is made on the tune split (the PRM's headline aggregation, the
tree search's tau) or on dev (first-error thresholds); test is only reported. Best-of-N accuracy is exact over all
subsets (votes at N=8: Monte-Carlo, its error reported). Intervals: bootstrap over test problems (clusters: content);
comparisons are paired. Per-problem results: OUT/per_problem.jsonl (`python -m lab.evidence` redoes any comparison).

Two headline pools: the tiny base's own answers, and a stronger policy's (checkpoints/tiny-strong: the paper's
setting, a PRM from a small base ranking a stronger model's answers). The PRM's labels come from tree search over
the base's own answers and rollouts; the synthetic sampler's pools (a weaker policy) carry the other findings; the
judge table rates the stronger policy's answers with the taught judges (checkpoints/tiny-judge-*). Stages, each
cached under --out with the settings that made it (a changed setting recomputes that stage and every later one):
problems -> pools -> tau (tune) -> labels -> PRM, ORM and two single-domain PRMs (fine-tuned from the tiny base) ->
scores, the judges' ratings, and the step search (search.py, on the first --search-n test problems) -> tables.
The last stdout line is one JSON object with the headline numbers.
"""
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm import tqdm

import bon
import judge
import orm
import prm
import search
import steps
import train
import tree_search
from common import cli, data, tasks
from lab import api, controls, evidence, report, speed
from policy import SyntheticPolicy, VLMPolicy, candidate, candidates

LABEL_POLICIES = ("base", "strong", "synthetic")  # who writes the labelled train solutions and their rollouts


@dataclass
class Args:
    out: str = field(default="out/bench", metadata={"help": "output folder (stages cached here)"})
    quick: bool = field(default=False, metadata={"help": "smoke run (~5 minutes on 2 CPU cores): a few problems, short training"})
    gpu: bool = field(default=False, metadata={"help": "run the one-GPU speed benchmark (speed.py) instead"})
    seed: int = field(default=0, metadata={"help": "seed of problems, pools, labels, training, bootstrap"})
    seeds: str = field(default="", metadata={"help": "comma-separated seeds: the pipeline once per seed, pooled"})
    base: str = field(default="tiny", metadata={"help": "the base model the reward models start from"})
    strong: str = field(default="tiny-strong", metadata={"help": "the stronger policy (not the reward models' base) "
                        "whose answers make the second headline pool: the paper's setting"})
    n_train: int = field(default=2000, metadata={"range": (1, None),
                                                 "help": "train problems (tree-search labels)"})
    n_tune: int = field(default=80, metadata={"range": (1, None),
                                              "help": "tune problems (the headline aggregation, tau)"})
    n_dev: int = field(default=60, metadata={"range": (1, None),
                                             "help": "dev problems (first-error thresholds)"})
    n_test: int = field(default=200, metadata={"range": (1, None),
                                               "help": "test problems (everything reported)"})
    pool: int = field(default=16, metadata={"range": (1, None), "help": "candidates per problem and policy"})
    labels: str = field(default="mcts", metadata={"help": "how train labels are made: mcts | mc (tree search: "
                        "tree_search.LABELLERS) | oracle (the suite's exact labels) | consensus (the MCTS labels of "
                        "the solutions where the base's step likelihood agrees on the first error)",
                        "choices": [*tree_search.LABELLERS, "consensus"]})
    hard_labels: bool = field(default=False, metadata={"help": "train on 1/0 labels (tree_search.hard_labels) "
                              "instead of the soft Monte-Carlo values"})
    label_policy: str = field(default="base", metadata={"help": "who writes the train solutions and their rollouts: "
                              "base (the tiny base at --temperature: on-policy, the headline) | strong (the stronger "
                              "policy, --strong) | synthetic (the sampler)", "choices": list(LABEL_POLICIES)})
    rollouts: int = field(default=16, metadata={"range": (1, None),
                                                "help": "tree search: K rollouts per value estimate"})
    samples: int = field(default=4, metadata={"range": (1, None),
                                              "help": "tree search: sampled solutions labelled per problem"})
    taus: str = field(default="0,0.1,0.2,0.3", metadata={"type": cli.listed(float, 0.0, 1.0),
                                                         "help": "tree search: tau values tried "
                                                         "on the tune split"})
    head: str = field(default=prm.HEAD, metadata={"help": "PRM / ORM head (train.py --help)", "choices": list(prm.HEADS)})
    beta: float = field(default=prm.BETA, metadata={"range": (0.0, None),
                                                    "help": "implicit head: scale of the "
                                                    "log-likelihood ratio"})
    steps: int = field(default=400, metadata={"range": (1, None),
                                              "help": "fine-tuning steps of every reward model "
                                              "(chosen on tune: --tune-only)"})
    lr: float = field(default=1e-4, metadata={"range": (0.0, None),
                                              "help": "PRM / ORM learning rate (chosen on tune)"})
    batch_size: int = field(default=32, metadata={"range": (1, None), "help": "PRM / ORM batch size"})
    judges: str = field(default="tiny-judge-short,tiny-judge-long,tiny-judge-strong,tiny-judge-reference", metadata={
        "help": "the judge table's VLM judges (model.SHIPPED names or folders), each in ORM mode, PRM mode and the "
                "hybrid over the stronger policy's answers"})
    judges_n: int = field(default=64, metadata={"range": (2, None), "help": "test problems of the judge table "
                          "(half of each family); dev: half as many, where the best judge is chosen"})
    search_n: int = field(default=32, metadata={"range": (1, None), "help": "test problems of the step search "
                          "(the first N; search.py): k=4 proposals, beam width 2, against Best-of-N"})
    temperature: float = field(default=1.0, metadata={"range": (0.0, None),
                                                      "help": "tiny-base policy sampling temperature"})
    tune_only: bool = field(default=False, metadata={"help": "train the PRM alone and print its Best-of-16 per "
                            "aggregation on the tune split: how steps, lr and beta are chosen (never on test)"})
    sweep: str = field(default="", metadata={"help": "the tuning sweep: --tune-only at every point of a grid, e.g. "
                       "'head=likelihood,tag;lr=1e-4,3e-4;steps=200,400' -> OUT/tuning_head_lr_steps.{json,md} "
                       "(with --readme: results/tuning/)"})
    readme: bool = field(default=False, metadata={"help": "write the headline tables into README.md (between markers)"})


ON_GPU = torch.cuda.is_available()  # a GPU takes larger batches and trains all four reward models at once
SCORE_BATCH, GEN_BATCH = (256, 512) if ON_GPU else (32, 128)  # answers per scoring pass, solutions per generate call
TRAIN_PROCS = 4 if ON_GPU else 2  # reward models trained at once
QUICK = dict(n_train=300, n_tune=24, n_dev=24, n_test=40, steps=200, search_n=8, judges_n=8)
SEARCH = dict(k=4, widths=(2,), pool=16)  # the step search (search.py) at beam width 2; b = 1 and 4: search.py alone
SPLITS = ("train", "tune", "dev", "test")
TAU_LABELS = ("mc", "mcts")  # the labellers that read a prefix as right when its value > tau
MODELS = {"prm": ("prm", None), "orm": ("orm", None), "prm_visual": ("prm", "visual"), "prm_text": ("prm", "text")}


class Stages:
    """The cache: OUT/NAME.json holds a stage's output with the key of the settings (and upstream keys) that made
    it; a different key recomputes it, and since keys chain, every stage after it."""

    def __init__(self, out):
        self.out, self.keys, self.this_run = Path(out), {}, 0.0

    def key(self, settings, after):
        return tasks.seed_of(json.dumps(settings, sort_keys=True, default=str), *(self.keys[u] for u in after))

    def fresh(self, name, settings, after=()):
        """Is OUT/NAME.json there with these settings (and the current upstream stages)?"""
        f = self.out / f"{name}.json"
        return f.exists() and json.loads(f.read_text()).get("key") == self.key(settings, after)

    def run(self, name, settings, make, after=(), seconds=None):
        """make() unless cached with the same key; `seconds`: compute time measured elsewhere (a subprocess)."""
        key, f = self.key(settings, after), self.out / f"{name}.json"
        old = json.loads(f.read_text()) if f.exists() else None
        if old and old.get("key") == key:
            self.keys[name] = key
            return old["out"]
        if old:
            had = old.get("settings") or {}  # (a stage file from an older bench has none)
            diff = {k: (had.get(k), v) for k, v in settings.items() if had.get(k) != v}
            print(f"[bench] {name}: settings or an earlier stage changed {diff or '(upstream)'}: recomputing")
        t0 = time.time()
        res = make()
        seconds = time.time() - t0 if seconds is None else seconds
        f.write_text(json.dumps({"key": key, "settings": settings, "seconds": round(seconds, 1), "out": res}))
        self.keys[name], self.this_run = key, self.this_run + seconds
        print(f"[bench] {name}: {seconds:.0f}s")
        return res

    def seconds(self):
        """Every current stage's recorded compute time (a rerun over the cache still reports the whole pipeline)."""
        return sum(self.stage_seconds().values())

    def stage_seconds(self):
        return {n: json.loads((self.out / f"{n}.json").read_text())["seconds"] for n in self.keys}


def stage_problems(a, st):
    out = st.out

    def make():
        for split in SPLITS:
            probs = tasks.make_problems(getattr(a, f"n_{split}"), a.seed, split)
            tasks.write_problems(out, probs, f"problems_{split}.jsonl")
        return {s: getattr(a, f"n_{s}") for s in SPLITS}
    st.run("problems", {"seed": a.seed, **{f"n_{s}": getattr(a, f"n_{s}") for s in SPLITS}}, make)
    return {s: data.read_jsonl(out / f"problems_{s}.jsonl", "problem") for s in SPLITS}


def rendered(probs):
    """The problems without their image paths (relative to OUT): a VLM policy renders each picture itself."""
    return [{k: v for k, v in p.items() if k != "image"} for p in probs]


# The pools of answers the reward models rank, by who writes them. "base" and "strong" are the two headlines: the
# reward models' own base, and a stronger policy that is not their base (the paper's setting: ViLPRM, fine-tuned
# from a 3B model, ranks the answers of GPT-4o and o1). "synthetic": the weak and strong samplers, a weaker policy.
POOL_KINDS = ("base", "strong", "synthetic")
HEADLINE_POOLS = ("base", "strong")
POOL_TAG = {"base": "b", "strong": "t"}  # in candidate ids ("w" and "s" are the weak and strong samplers')


def policy_pool(a, probs, policy, kind, writer):
    """A VLM policy's own answers, `pool` a problem sampled at a temperature: a real model's mistakes."""
    sols = policy.rollout_many([(p, [], a.pool, tasks.seed_of(a.seed, f"{kind}-pool")) for p in rendered(probs)])
    return [candidate(p, f"{p['id']}-{POOL_TAG[kind]}{j:02d}", s, writer) for p, ss in zip(probs, sols)
            for j, s in enumerate(ss) if s["steps"]]


def stage_pools(a, st, P):
    """`pool` candidates per problem for each of POOL_KINDS on dev and test, and the two headline policies' on tune
    too (the PRM's aggregation is chosen on the base's, and the sweep reads both)."""
    names = [(s, k) for k in POOL_KINDS for s in ("tune", "dev", "test") if s != "tune" or k in HEADLINE_POOLS]

    def make():
        writers = {"base": a.base, "strong": a.strong}
        policies = {kind: VLMPolicy(name, a.temperature, batch_size=GEN_BATCH) for kind, name in writers.items()}
        for split, kind in names:
            cands = ([c for p in P[split] for s in ("weak", "strong") for c in candidates(p, a.pool // 2, a.seed, s)]
                     if kind == "synthetic" else policy_pool(a, P[split], policies[kind], kind, writers[kind]))
            data.write_jsonl(st.out / f"cands_{split}_{kind}.jsonl", cands, "candidate")
        return {f"{s}_{k}": True for s, k in names}
    st.run("pools", {"pool": a.pool, "base": a.base, "strong": a.strong, "temperature": a.temperature,
                     "pools": names}, make, after=("problems",))
    return {n: data.read_jsonl(st.out / f"cands_{n[0]}_{n[1]}.jsonl", "candidate") for n in names}


def stage_tau(a, st):
    """tau (a prefix is right when its value > tau) chosen on tune problems: the best first-error agreement."""
    taus = [float(t) for t in a.taus.split(",")]
    n = a.n_tune if a.label_policy != "synthetic" else (100 if a.quick else 300)  # tune problems (a VLM: slow)

    def make():
        pol = label_policy(a)
        res = {str(t): tree_search.evaluate(n, a.seed, a.rollouts, samples=a.samples, tau=t, split="tune",
                                            methods=(labeller,), policy=pol)[labeller] for t in taus}
        return {"tau": max(taus, key=lambda t: res[str(t)]["first_error_agreement"]), "grid": res}
    labeller = labeller_of(a)
    if labeller not in TAU_LABELS:
        return {"tau": None, "grid": {}}
    return st.run("tau", {"taus": taus, "n": n, "rollouts": a.rollouts, "samples": a.samples, "seed": a.seed,
                          "labels": labeller, **label_writer(a), "base": a.base,
                          "temperature": a.temperature}, make)


def label_policy(a):
    """The tree search's policy: the tiny base (on-policy: it writes the first headline pool), the stronger policy
    (it writes the second), or the synthetic sampler."""
    cli.choice(a.label_policy, LABEL_POLICIES, "--label-policy")
    if a.label_policy == "synthetic":
        return SyntheticPolicy()
    return VLMPolicy(a.base if a.label_policy == "base" else a.strong, a.temperature, batch_size=GEN_BATCH)


def label_writer(a):
    """The label policy in a stage's settings: the stronger policy also by its name (a cache made by another
    stronger policy is not read back)."""
    return {"policy": a.label_policy} | ({"strong": a.strong} if a.label_policy == "strong" else {})


def labeller_of(a):
    """The tree search or oracle that makes the labels (--labels consensus filters the MCTS labels)."""
    return "mcts" if a.labels == "consensus" else a.labels


def consensus_labels(a, P, recs):
    """The labelled solutions where a second source, the base's own step likelihood, puts the first error where the
    labels do (tree_search.consensus, as Athena-PRM and VL-PRMs keep what two sources agree on)."""
    problems = {p["id"]: p for p in P["train"]}
    model, processor = prm.load(a.base)
    images = [tasks.render(problems[r["meta"]["problem_id"]]) for r in recs]
    likelihoods = controls.step_likelihood(model, processor, images, [r["prompt"] for r in recs],
                                           [r["completions"] for r in recs], batch_size=SCORE_BATCH)
    return tree_search.consensus(recs, likelihoods)


def stage_labels(a, st, P, tau):
    def make():
        probs = rendered(P["train"])
        labeller = tree_search.LABELLERS[labeller_of(a)]
        recs, stats = labeller(probs, label_policy(a), a.rollouts, a.seed, a.samples, tau, True)
        if a.labels == "consensus":
            recs, stats["consensus"] = consensus_labels(a, P, recs)
            stats["records"] = len(recs)
        if a.hard_labels:
            recs = [{**r, "labels": tree_search.hard_labels(r, tau)} for r in recs]
        fam = {p["id"]: p["family"] for p in P["train"]}
        data.write_jsonl(st.out / "labels.jsonl", recs, "labelled")
        for f in ("visual", "text"):  # the single-domain training sets of the cross-domain experiment
            data.write_jsonl(st.out / f"labels_{f}.jsonl", [r for r in recs if fam[r["meta"]["problem_id"]] == f],
                             "labelled")
        return stats
    settings = {"labels": a.labels, "rollouts": a.rollouts, "samples": a.samples, "tau": tau,
                **label_writer(a), "base": a.base, "temperature": a.temperature}
    if a.hard_labels:
        settings["hard_labels"] = True
    return st.run("labels", settings, make, after=("problems",) + (("tau",) if labeller_of(a) in TAU_LABELS else ()))


def train_args(a, st, name):
    """The train.py settings of one reward model: prm | orm on all labels, prm_visual | prm_text on one family's."""
    objective, domain = MODELS[name]
    labels = st.out / (f"labels_{domain}.jsonl" if domain else "labels.jsonl")
    return train.Args(objective=objective, data=str(labels), out=str(st.out / name), warmup=a.steps // 10,
                      eval_every=a.steps, save_every=a.steps, model=a.base, max_steps=a.steps, lr=a.lr,
                      batch_size=a.batch_size, seed=a.seed, head=a.head, beta=a.beta)


def launch(args, log):
    """python train.py with these settings as its own one-thread process, its output in `log`."""
    shutil.rmtree(args.out, ignore_errors=True)  # a model made with other settings goes
    flags = [(f"--{k}" if v else f"--no-{k}") if isinstance(v, bool) else f"--{k}={v}"
             for k, v in ((k.replace("_", "-"), v) for k, v in asdict(args).items())]
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "train.py"), *flags], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"training {args.out} failed (exit {done.returncode}): see {log}")


def stage_train(a, st, names=tuple(MODELS)):
    """The four reward models, fine-tuned from the base, TRAIN_PROCS at a time (one thread each: a tiny model
    trains faster as two one-thread processes than as one two-thread process on two cores). -> {name: folder}."""
    args = {n: train_args(a, st, n) for n in names}
    settings = {n: {**{k: v for k, v in asdict(args[n]).items() if k != "out"}, "data": Path(args[n].data).name}
                for n in names}  # no paths in the key: a moved output folder is still cached
    todo = [n for n in names if not (st.fresh(f"train_{n}", settings[n], ("labels",))
                                     and (Path(args[n].out) / "config.json").exists())]
    t0 = time.time()
    with ThreadPoolExecutor(TRAIN_PROCS) as ex:  # a failed run raises here
        list(ex.map(lambda n: launch(args[n], st.out / f"{n}.log"), todo))
    seconds = {n: (time.time() - t0) / len(todo) for n in todo}  # wall time shared out: the stages add up to it
    return {n: st.run(f"train_{n}", settings[n], lambda n=n: args[n].out, ("labels",), seconds.get(n)) for n in names}


def once(reader, cands, steps_):
    """reader(rows) -> one result per row, run on each distinct answer (problem, steps) once and spread to every
    candidate that wrote it: -> [result per candidate]. A policy repeats itself (the base's 3,200 test answers hold
    about 550 distinct ones), and a score depends on the answer alone (prm.per_step: no padding, so no batch)."""
    first = {}
    for i, c in enumerate(cands):
        first.setdefault((c["problem_id"], tuple(steps_[i])), i)
    by_answer = dict(zip(first, reader(list(first.values()))))
    return [by_answer[(c["problem_id"], tuple(steps_[i]))] for i, c in enumerate(cands)]


def pool_inputs(problems, cands):
    """What a reader of a pool needs, one entry per candidate: (images, questions, steps, candidate ids)."""
    probs = {p["id"]: p for p in problems}
    images = [tasks.render(probs[c["problem_id"]]) for c in cands]
    questions = [probs[c["problem_id"]]["question"] for c in cands]
    return images, questions, [c["steps"] for c in cands], [c["id"] for c in cands]


def score_sets(a, P, split, kind, cands, models, prior):
    """{key: {candidate id: step scores or a float}} for one pool; what is scored depends on what reads it."""
    ims, qs, st, ids = pool_inputs(P[split], cands)

    def score(name, images=ims, steps_=st, progress=False):
        def read(rows):
            return prm.score_steps(*models[name], [images[i] for i in rows], [qs[i] for i in rows],
                                   [steps_[i] for i in rows], batch_size=SCORE_BATCH, progress=progress)[0]
        return {i: x for i, x in zip(ids, once(read, cands, steps_)) if x is not None}

    def base_likelihood(rows):
        return controls.step_likelihood(*models["base"], [ims[i] for i in rows], [qs[i] for i in rows],
                                        [st[i] for i in rows])
    sets = {"prm": score("prm", progress=True)}
    if split == "tune":  # the headline aggregation is chosen here: the PRM alone
        return sets
    sets["orm_steps"] = score("orm")  # the ORM read at every tag, for first-error F1; its answer score is the last
    sets["orm"] = {i: s for i, s in zip(sets["orm_steps"], orm.from_steps(list(sets["orm_steps"].values())))}
    sets["base_likelihood"] = {i: s for i, s in zip(ids, once(base_likelihood, cands, st)) if s is not None}
    if kind in HEADLINE_POOLS:  # the PRM against what one gets for free (majority, ORM, the base itself)
        return sets
    sets["prm_blank"] = score("prm", images=controls.blank(ims))
    sets["prior"] = dict(zip(ids, controls.prior_scores(prior, st)))
    if split == "test":
        for cut in steps.CUTS:  # the segmentation ablation: the same answers cut other ways
            if cut != "steps":
                sets[f"prm_{cut}"] = score("prm", steps_=[steps.segment(s, cut) for s in st])
        sets["prm_split"] = score("prm", steps_=[steps.split_steps(c["text"]) for c in cands])  # as a reader cuts it
        for name in ("prm_visual", "prm_text"):
            sets[name] = score(name)
    return sets


def stage_scores(a, st, P, pools, ck):
    def make():
        prior = controls.prior_table(data.read_jsonl(st.out / "labels.jsonl", "labelled"))
        models = {name: prm.load(path) for name, path in {**ck, "base": a.base}.items()}
        return {f"{s}_{k}": score_sets(a, P, s, k, cands, models, prior) for (s, k), cands in pools.items()}
    return st.run("scores", {}, make, after=("pools",) + tuple(f"train_{n}" for n in MODELS))


def judge_sets(rater, name, problems, cands):
    """One judge's ratings of a pool's candidates: {"NAME.orm": {id: answer score}, "NAME.prm": {id: step
    scores}} (judge.py: one rubric prompt an answer, one a step, read by logits)."""
    ims, qs, st, ids = pool_inputs(problems, cands)

    def rate(rows):  # (step scores, answer score) of each row
        args = ([ims[i] for i in rows], [qs[i] for i in rows], [st[i] for i in rows])
        return list(zip(judge.judge_steps(rater, *args)[0], judge.judge_answers(rater, *args)[0]))
    ratings = once(rate, cands, st)
    return {f"{name}.orm": {i: r[1] for i, r in zip(ids, ratings)},
            f"{name}.prm": {i: r[0] for i, r in zip(ids, ratings)}}


def stage_judges(a, st, P, pools):
    """The judge table's ratings: every judge on the stronger policy's answers to judges_n test problems and
    judges_n // 2 dev problems (where the best judge and mode are chosen) -> {"dev" | "test": judge_sets...}."""
    names = [n for n in a.judges.split(",") if n]
    judged = {"dev": evidence.judged_ids(P["dev"], a.judges_n // 2),
              "test": evidence.judged_ids(P["test"], a.judges_n)}

    def make():
        out = {split: {} for split in judged}
        for name in tqdm(names, desc="judges"):
            rater = judge.load_judge(name, batch_size=SCORE_BATCH)
            for split, ids in judged.items():
                cands = [c for c in pools[(split, evidence.JUDGES_POOL)] if c["problem_id"] in ids]
                out[split].update(judge_sets(rater, name, P[split], cands))
        return out
    settings = {"judges": names, "n": a.judges_n, "pool": evidence.JUDGES_POOL}
    return st.run("judges", settings, make, after=("pools",))


# The same rating training from the base and from the stronger solver: "is a stronger solver a better judge?"
SOLVER_PAIR = ("tiny-judge-short", "tiny-judge-strong")


def choose_judge(P, pools, ratings):
    """The judge table's best judge and mode: the best Best-of-16 on dev's judged problems (exact; ties: the first
    judge, then orm, prm, hybrid) -> {"names", "best": [judge, mode], "solver_pair", "dev_bo16", "dev_problems",
    "dev_reference": one random sample's and majority vote's Best-of-16 on the same problems}."""
    names = evidence.judge_names(ratings)
    cands = pools[("dev", evidence.JUDGES_POOL)]
    rated = {c["problem_id"] for c in cands if c["id"] in ratings[f"{names[0]}.orm"]}
    pp = bon.make_pools([p for p in P["dev"] if p["id"] in rated], cands, ratings)

    def best_of_16(rule):  # the pick from the whole pool of 16 (bon.select), averaged over the problems
        return round(sum(bon.select(pool, rule) for pool in pp.values()) / len(pp), 4)
    acc = {method: best_of_16(rule) for method, rule in evidence.judge_methods(names).items()}
    judge_name, mode = max(acc, key=acc.get).rsplit(" ", 1)
    pair = [n for n in SOLVER_PAIR if n in names]
    return {"names": names, "best": [judge_name, mode], "solver_pair": pair if len(pair) == 2 else None,
            "dev_bo16": acc, "dev_problems": len(pp),
            "dev_reference": {m: best_of_16(m) for m in ("random", "majority")}}  # what a judge must beat


def stage_search(a, st, P, ck):
    """Step search on the first search_n test problems with every scorer (search.py), from the tiny base's steps,
    and Best-of-N from 16 of its whole answers: -> search.py's rows."""
    def make():
        readers = search.load_readers(a.base, str(ck["prm"]), str(ck["orm"]))
        policy = VLMPolicy(a.base, a.temperature, batch_size=GEN_BATCH)
        return search.run(rendered(P["test"][:a.search_n]), policy, readers, seed=a.seed, progress=True, **SEARCH)
    return st.run("search", {"n": a.search_n, **SEARCH, "seed": a.seed, "temperature": a.temperature},
                  make, after=("problems", "train_prm", "train_orm"))


def search_results(rows, head, seed):
    """The search's tables (search.summary) and the two comparisons its findings read, at b = 2."""
    level = evidence.adjusted_level()
    res = {**search.summary(rows, head, seed, adjusted=level), "k": SEARCH["k"]}
    comps = {"search_prm_vs_orm": search.compare(rows, "prm b=2", "orm b=2", seed=seed, adjusted=level),
             "search_prm_vs_best_of_n": res["search"]["prm b=2"]["vs"]["best_of_n_prm"]["correct"]}
    return res, {k: {**c, "n": c.get("n") or 0} for k, c in comps.items()}


def tune_bon16(P, pools, scores, kind):
    """{aggregation: the PRM's Best-of-16 on the tune split's pool of `kind`} (exact over subsets)."""
    pp = bon.make_pools(P["tune"], pools[("tune", kind)], scores[f"tune_{kind}"])
    return {g: sum(bon.at_n(bon.prepare(pool, f"max:prm:{g}"), "max", 16)[0] for pool in pp.values()) / len(pp)
            for g in bon.AGGS}


def choose_head(P, pools, scores):
    """The PRM's aggregation: the best Best-of-16 on the tune split's pool of the base's answers (ties: the first
    in AGGS)."""
    acc = tune_bon16(P, pools, scores, "base")
    return max(bon.AGGS, key=lambda g: acc[g]), acc


def train_label_quality(st, P, tau):
    """The train labels against the oracle on the same solutions, the lucky ones apart (tree_search.label_quality)."""
    records = data.read_jsonl(st.out / "labels.jsonl", "labelled")
    return tree_search.label_quality({p["id"]: p for p in P["train"]}, records, tau["tau"] or 0.0)


def run(a):
    """One seed, the whole pipeline: -> (results, rows, first-error items, fresh-step items)."""
    t0, st = time.time(), Stages(a.out)
    st.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    P = stage_problems(a, st)
    pools = stage_pools(a, st, P)
    tau = stage_tau(a, st)
    label_stats = stage_labels(a, st, P, tau["tau"])
    if a.tune_only:  # the PRM alone, read on the tune split's headline pools only
        model = {"prm": prm.load(stage_train(a, st, ("prm",))["prm"])}
        scores = {f"tune_{kind}": score_sets(a, P, "tune", kind, pools[("tune", kind)], model, None)
                  for kind in HEADLINE_POOLS}
        return {"config": asdict(a), "tune_bon16": choose_head(P, pools, scores)[1],
                "tune_bon16_strong": tune_bon16(P, pools, scores, "strong")}, [], [], []
    ck = stage_train(a, st)
    scores = stage_scores(a, st, P, pools, ck)
    ratings = stage_judges(a, st, P, pools)
    judges = choose_judge(P, pools, ratings["dev"])
    search_rows = stage_search(a, st, P, ck)
    vlm = a.label_policy != "synthetic"
    n_lab = a.n_test if vlm else (200 if a.quick else 500)  # the test problems (a VLM: slow)
    labelling = st.run("labelling", {"n": n_lab, "rollouts": a.rollouts, "tau": tau["tau"], "seed": a.seed,
                                     **label_writer(a), "base": a.base, "temperature": a.temperature},
                       lambda: tree_search.evaluate(n_lab, a.seed, a.rollouts, tau=tau["tau"] or 0, split="test",
                                                    methods=("mcts",) if vlm else ("mc", "mcts"),
                                                    policy=label_policy(a)),
                       after=("tau",) if labeller_of(a) in TAU_LABELS else ())
    spd = st.run("speed", {}, lambda: speed.single_pass_vs_prefixes(ck["prm"], P["test"], pools[("test", "synthetic")]),
                 after=("pools", "train_prm"))
    spd = {**spd, "served_rollouts_per_s": st.run("served", {"base": a.base},
                                                  lambda: api.benchmark(a.base, rendered(P["test"][:8])))}
    head, tune_acc = choose_head(P, pools, scores)
    search_table, search_comps = search_results(search_rows, head, a.seed)
    rows = evidence.problem_rows(a, P, pools, scores, head, ratings["test"])
    fe_items, auc_items = evidence.step_items(P, pools, scores)
    res = {"config": asdict(a), "seconds": round(st.seconds() + time.time() - t0 - st.this_run, 1),
           "seconds_this_run": round(time.time() - t0, 1), "stage_seconds": st.stage_seconds(),
           "machine": report.machine(),
           **evidence.results_from(a, rows, fe_items, auc_items, head, a.seed, search_comps, judges),
           "search": search_table,
           "tuning": {"aggregation": tune_acc, "head": head, "tau": tau},
           "labelling": {**labelling, "train_labels": {**label_stats, "vs_oracle": train_label_quality(st, P, tau)}},
           "speed": spd,
           "world": {kind: tasks.world(P["test"], pools[("test", kind)]) for kind in POOL_KINDS},
           "pools": {f"{s}_{k}": len(v) for (s, k), v in pools.items()}}
    return res, rows, fe_items, auc_items


def seed_tagged(row, seed):
    """A row of one seed's run, its problem (and candidate) named with the seed: pooled seeds never share one (the
    seeds' candidate ids are the same strings, and the paired F1 joins rows by candidate)."""
    tagged = {**row, "problem": f"s{seed}/{row['problem']}"}
    if "candidate" in row:
        tagged["candidate"] = f"s{seed}/{row['candidate']}"
    return tagged


def run_seeds(a, seeds):
    """The pipeline once per seed (OUT/seed-K), then every number pooled over all seeds' test problems (intervals
    over the pooled problems, clusters: content) and each seed's headline numbers with their mean and spread."""
    per, rows, fe, au, t0 = {}, [], [], [], time.time()
    for s in seeds:
        r, rw, f, u = run(Args(**{**asdict(a), "seed": s, "seeds": "", "readme": False, "out": f"{a.out}/seed-{s}"}))
        report.write_outputs(r, rw, f, u, Args(**{**asdict(a), "seed": s, "seeds": "", "readme": False}),
                      Path(a.out) / f"seed-{s}")
        per[s] = r
        rows += [seed_tagged(x, s) for x in rw]
        fe += [seed_tagged(x, s) for x in f]
        au += [seed_tagged(x, s) for x in u]
    heads = {s: r["head"] for s, r in per.items()}
    res = {"config": asdict(a), "seconds": round(sum(r["seconds"] for r in per.values()), 1),
           "seconds_this_run": round(time.time() - t0, 1), "machine": report.machine(),
           "stage_seconds": {s: r.get("stage_seconds") for s, r in per.items()},
           **evidence.results_from(a, rows, fe, au, max(set(heads.values()), key=list(heads.values()).count), a.seed),
           **{k: per[seeds[0]][k] for k in ("tuning", "labelling", "speed", "pools")},
           "seeds": {"heads": heads, "per_seed": {str(s): report.headline(r) for s, r in per.items()},
                     "spread": report.spread([report.headline(r) for r in per.values()])}}
    return res, rows, fe, au


def sweep_grid(text):
    """'head=likelihood,tag;lr=1e-4,3e-4' -> [{"head": "likelihood", "lr": 0.0001}, ...]: every combination, each
    value of its setting's type."""
    types = {f.name: type(f.default) for f in fields(Args)}
    axes = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        name = name.strip().replace("-", "_")
        if name not in types or not values:
            raise ValueError(f"--sweep {part!r}: expected SETTING=V1,V2 with a setting of bench.py --help")
        axes[name] = [types[name](v.strip()) for v in values.split(",")]
    return [dict(zip(axes, point)) for point in itertools.product(*axes.values())]


def run_sweep(a):
    """Every choice bench.py makes on tune, as one command: the PRM trained and read on the tune split's two headline
    pools at each point of the grid (stages are cached: points that share labels share them). -> {"points":
    [{setting: value, "tune_bon16": {aggregation: ...}, "tune_bon16_strong": ..., "best_aggregation": ...}]}.
    OUT/tuning_<settings>.{json,md}, named by the settings swept (with --readme: copied to results/tuning/)."""
    points = []
    for point in sweep_grid(a.sweep):
        res, _, _, _ = run(Args(**{**asdict(a), **point, "tune_only": True, "sweep": ""}))
        best = max(res["tune_bon16"], key=res["tune_bon16"].get)
        base, strong = res["tune_bon16"][best], res["tune_bon16_strong"][best]
        points.append({**point, "tune_bon16": res["tune_bon16"], "tune_bon16_strong": res["tune_bon16_strong"],
                       "best_aggregation": best})
        print(f"[sweep] {point}: Best-of-16 on tune {base:.3f} ({best}); on the stronger policy's {strong:.3f}")
    axes = list(sweep_grid(a.sweep)[0]) if points else []
    header = axes + ["Best-of-16 on the base's tune answers (best aggregation)",
                     "on the stronger policy's (the same aggregation)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        best = p["best_aggregation"]
        cells = [str(p[n]) for n in axes]
        cells += [f"{p['tune_bon16'][best]:.3f} ({best})", f"{p['tune_bon16_strong'][best]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    out, name = Path(a.out), "tuning_" + "_".join(axes)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"sweep": a.sweep, "points": points}, indent=1))
    title = f"# Tuning sweep\n\n`python bench.py --sweep '{a.sweep}'`\n\n"
    (out / f"{name}.md").write_text(title + "\n".join(lines) + "\n")
    if a.readme:
        (report.ROOT / "results" / "tuning").mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md"):
            shutil.copy(out / f"{name}{suffix}", report.ROOT / "results" / "tuning")
    return {"points": points}


def main(a: Args):
    if a.sweep:
        res = run_sweep(a)
        print(json.dumps(res))
        return res
    if a.gpu:
        return speed.main(speed.Args())
    if a.quick:
        a = Args(**{**asdict(a), **QUICK})
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    res, rows, fe, au = run_seeds(a, seeds) if seeds else run(a)
    if a.tune_only:
        print(json.dumps(res))
        return res
    report.write_outputs(res, rows, fe, au, a, Path(a.out))
    print(json.dumps({k: v for k, v in report.headline(res).items() if k != "verdicts"}))
    return res


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
