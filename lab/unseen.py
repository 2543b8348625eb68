"""Labels on contents the base never memorised: do they teach the PRM more? Measured on tune.

    python bench.py --tune-only             # first: bench's problems, tune pool and tau in out/bench
    python -m lab.unseen                    # out/unseen/{unseen.json, unseen.md}
    python -m lab.unseen --n 200 --steps 40 --out out/unseen-quick    # a quick look (numbers not evidence)

The tiny base was pretrained on every train content (tasks.SPLITS), and bench labels the base's own answers to
train problems. On contents it memorised the base is right far more often than on unseen ones (the text items
almost always), so its labels hold few examples of the wrong steps it writes elsewhere. Two arms that differ in
that alone:
- seen: problems on train contents, a seeded subset as large, kind by kind, as the dev split;
- unseen: problems on dev contents, which the base never saw (bench only chooses its first-error thresholds
  there; none of these problems is bench's: their ids, and so their layouts, are their own).
Each arm: --n problems (the kinds in turn, each kind's contents in a seeded order), --samples of the base's answers
to each labelled by --labels (bench's tree search, with bench's tau), a PRM fine-tuned with bench's settings
(lab/curves.py's run, the model kept at step 0 and at the end), read on bench's tune pool (the base's own answers
to tune problems): first-error F1, fresh-step AUC, Best-of-16 and faithful@16 with 95% intervals over tune's
contents, and the unseen arm minus the seen arm, paired. The F1 threshold is chosen on the same tune pool for
both arms (each at its best threshold): dev's contents are the unseen arm's training contents, so a threshold
chosen there would not treat the arms alike. Per arm also: the base's answers right, by kind (the memorisation
gap), the share of labelled answers with a wrong step by the oracle, and the labels against the oracle.

Each arm's labels are kept in OUT/ARM/ with the settings that made them, and each PRM's points in OUT/RUN/points.json
(lab.curves): a rerun reads back what is done.
"""
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import prm
import tree_search
from common import cli, data, tasks
from lab import curves
from policy import VLMPolicy

ARMS = ("seen", "unseen")
SPLIT_OF_ARM = {"seen": "train", "unseen": "dev"}  # where each arm's contents come from


@dataclass
class Args:
    bench: str = field(default="out/bench", metadata={"help": "a bench.py output folder: its tune pool and tau"})
    out: str = field(default="out/unseen", metadata={"help": "output folder: unseen.json, unseen.md, each arm"})
    n: int = field(default=2000, metadata={"range": (1, None), "help": "labelled problems per arm (bench's --n-train)"})
    samples: int = field(default=4, metadata={"range": (1, None), "help": "the base's answers labelled per problem"})
    rollouts: int = field(default=16, metadata={"range": (1, None), "help": "tree search: rollouts per value"})
    labels: str = field(default="mcts", metadata={"help": "mcts | mc | oracle (tree_search.LABELLERS)",
                                                  "choices": list(tree_search.LABELLERS)})
    head: str = field(default=prm.HEAD, metadata={"help": "the PRM's head (prm.HEADS)", "choices": list(prm.HEADS)})
    steps: int = field(default=400, metadata={"range": (1, None), "help": "fine-tuning steps (bench's --steps)"})
    lr: float = field(default=1e-4, metadata={"range": (0.0, None), "help": "learning rate (bench's --lr)"})
    batch_size: int = field(default=32, metadata={"range": (1, None), "help": "batch size (bench's --batch-size)"})
    temperature: float = field(default=1.0, metadata={"range": (0.0, None), "help": "the base's sampling temperature"})
    seed: int = field(default=0, metadata={"help": "seed of the contents subset, problems, labels and training"})


def arm_contents(arm, seed):
    """{kind: [content]}: dev's contents (unseen), or as many train contents per kind, drawn with the seed (seen)."""
    out = {}
    for kind in tasks.KINDS:
        split = tasks.split_contents(kind)
        out[kind] = split["dev"] if arm == "unseen" else \
            random.Random(tasks.seed_of(seed, "seen", kind)).sample(split["train"], len(split["dev"]))
    return out


def arm_problems(arm, n, seed):
    """n problems on the arm's contents, the kinds in turn; each kind walks a seeded shuffle of its contents."""
    order = {kind: random.Random(tasks.seed_of(seed, arm, kind)).sample(cs, len(cs))
             for kind, cs in arm_contents(arm, seed).items()}
    kinds, problems = list(order), []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        content = order[kind][(i // len(kinds)) % len(order[kind])]  # a content repeats once all are used
        problems.append(tasks.make_problem(f"{arm}-{i:05d}", seed, kind=kind, split=SPLIT_OF_ARM[arm],
                                           content=content))
    return problems


def arm_labels(a, arm, tau):
    """The arm's problems (OUT/ARM/problems.jsonl, images beside) and the base's labelled answers to them
    (OUT/ARM/labels.jsonl), made once per settings: -> (problems by id, labelled records)."""
    folder = Path(a.out) / arm
    settings = {k: getattr(a, k) for k in ("n", "samples", "rollouts", "labels", "temperature", "seed")}
    settings["tau"] = tau
    done = folder / "labels.done.json"
    if not (done.exists() and json.loads(done.read_text()) == settings):
        problems = tasks.write_problems(folder, arm_problems(arm, a.n, a.seed))
        policy = VLMPolicy("tiny", a.temperature, batch_size=128)  # bench's CPU generation batch
        rendered = [{k: v for k, v in p.items() if k != "image"} for p in problems]  # the policy renders its own
        print(f"[unseen] {arm}: labelling the base's answers to {len(problems)} problems ({a.labels})")
        labeller = tree_search.LABELLERS[a.labels]
        records, _ = labeller(rendered, policy, a.rollouts, a.seed, a.samples, tau or 0.0, True)
        data.write_jsonl(folder / "labels.jsonl", records, "labelled")
        done.write_text(json.dumps(settings))
    problems = data.read_jsonl(folder / "problems.jsonl", "problem")
    return {p["id"]: p for p in problems}, data.read_jsonl(folder / "labels.jsonl", "labelled")


def world_of_labels(problems, records, tau):
    """What an arm's labels hold: the base's answers right by kind, the share with a wrong step by the oracle
    (what they can teach) by family, and the labels against the oracle (tree_search.label_quality)."""
    by_kind, wrong_step = {}, {}
    for r in records:
        p = problems[r["meta"]["problem_id"]]
        by_kind.setdefault(p["kind"], []).append(r["meta"]["correct"])
        wrong_step.setdefault(p["family"], []).append(tasks.first_error(p, r["completions"]) != -1)
    share = {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())}
    return {"answers": len(records), "right": share,
            "right_all": round(sum(sum(v) for v in by_kind.values()) / max(len(records), 1), 4),
            "wrong_step": {f: round(sum(v) / len(v), 4) for f, v in sorted(wrong_step.items())},
            "vs_oracle": tree_search.label_quality(problems, records, tau or 0.0)}


def train_and_read(a, arm, labels, tune):
    """The arm's PRM, trained with bench's settings and read on tune at step 0 and at the end (lab.curves: the
    points are kept and read back) -> its points."""
    curve_args = curves.Args(bench=a.bench, out=a.out, steps=a.steps, every=a.steps, lr=a.lr,
                             batch_size=a.batch_size, seed=a.seed)
    points, _ = curves.curve(curve_args, a.head, arm, labels, tune, tune)  # threshold: tune, for both arms
    return points


def table(res):
    lines = ["| arm | contents | base right (labelled answers) | with a wrong step: visual / text | step | "
             "first-error F1 | fresh-step AUC | Best-of-16 | faithful@16 |",
             "|---|---|---|---|---|---|---|---|---|"]
    measures = ("first_error_f1", "fresh_auc", "bo16", "faithful16")
    for arm in ARMS:
        labels = res["arms"][arm]["labels"]
        wrong = labels["wrong_step"]
        what = (f"| {arm} | {SPLIT_OF_ARM[arm]} | {labels['right_all']:.3f} | "
                f"{wrong.get('visual', 0):.3f} / {wrong.get('text', 0):.3f} |")
        for p in res["arms"][arm]["points"]:
            cells = [curves.with_ci(p[m], p.get(f"{m}_ci")) for m in measures]
            lines.append(f"{what} {p['step']} | " + " | ".join(cells) + " |")
    d = res["unseen_minus_seen"]
    lines.append(f"| unseen - seen (paired) | | | | {res['steps']} | {curves.signed(d['first_error_f1'])} | - | "
                 f"{curves.signed(d['bo16'])} | {curves.signed(d['faithful16'])} |")
    return "\n".join(lines)


def by_kind_table(res):
    kinds = sorted(res["arms"]["seen"]["labels"]["right"])
    lines = ["| arm | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for arm in ARMS:
        right = res["arms"][arm]["labels"]["right"]
        lines.append(f"| {arm} | " + " | ".join(f"{right[k]:.3f}" for k in kinds) + " |")
    return "\n".join(lines)


def main(a: Args):
    t0, out, bench = time.time(), Path(a.out), Path(a.bench)
    out.mkdir(parents=True, exist_ok=True)
    tune_file = bench / "cands_tune_base.jsonl"
    if not tune_file.exists():
        raise FileNotFoundError(f"{tune_file}: no tune pool; run python bench.py --tune-only --out {a.bench} first")
    tune = ({p["id"]: p for p in data.read_jsonl(bench / "problems_tune.jsonl", "problem")},
            data.read_jsonl(tune_file, "candidate"))
    tau = json.loads((bench / "tau.json").read_text())["out"]["tau"] if (bench / "tau.json").exists() else 0.0
    res = {"settings": asdict(a), "tau": tau, "steps": a.steps, "tune_problems": len(tune[0]), "arms": {}}
    for arm in ARMS:
        problems, records = arm_labels(a, arm, tau)
        res["arms"][arm] = {"labels": world_of_labels(problems, records, tau),
                            "points": train_and_read(a, arm, out / arm / "labels.jsonl", tune)}
    seen, unseen = (res["arms"][arm]["points"][-1] for arm in ARMS)
    res["unseen_minus_seen"] = curves.change(seen, unseen, tune)  # "last minus first": unseen minus seen
    for arm in ARMS:  # the paired items stay in the points files, not in the summary
        points = res["arms"][arm]["points"]
        res["arms"][arm]["points"] = [{k: v for k, v in p.items() if k != "items"} for p in points]
    res["seconds"] = round(time.time() - t0, 1)
    (out / "unseen.json").write_text(json.dumps(res, indent=1))
    command = (f"python -m lab.unseen --bench {a.bench} --n {a.n} --labels {a.labels} --head {a.head} "
               f"--steps {a.steps}")
    text = (f"# Labels on contents the base never saw, on tune\n\n`{command}` ({res['seconds']:.0f} s this call)."
            f" Tune: {len(tune[0])} problems, {len(tune[1])} answers of the base; 95% bootstrap intervals over "
            f"tune's contents; F1 at the threshold best on tune for each arm.\n\n{table(res)}\n\n"
            f"## The base's answers right, by kind (the labelled answers)\n\n{by_kind_table(res)}\n")
    (out / "unseen.md").write_text(text)
    print(text)
    return res


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
