"""Learning curves on the tune split: what a reward model learns, step by step, from each head and label source.

    python bench.py --tune-only                         # first: the problems, pools and MCTS labels in out/bench
    python -m lab.curves                                # out/curves/{curves.json, curves.md, curves.png}
    python -m lab.curves --heads likelihood,separator --labels mcts,oracle --steps 400 --every 100

For each (head, label source) a PRM is fine-tuned from the base with bench's settings (train.py, the model kept
every --every steps from step 0), and each kept model is read on the tune split's headline pool (the base's own
answers): first-error F1 (threshold chosen on the dev pool, as bench does), fresh-step AUC, Best-of-16 and
faithful@16 (the share of picks whose every step is right by the oracle). Step 0 is the head before training: for
the likelihood head, the base's own step likelihood, calibrated. The references beside the curves read no labels:
majority vote, and the rule that guesses one first error per family (lab/evidence.py's content-free rule).

Label sources (all of the same sampled train solutions, bench's OUT/labels.jsonl):
- mcts: the tree search's labels (bench's default);
- oracle: the same solutions labelled by the suite's oracle (the upper bound of any labeller);
- consensus: the MCTS labels kept only where the base's own step likelihood puts the first error in the same place
  (tree_search.consensus), as Athena-PRM and VL-PRMs keep what two sources agree on.
Their accuracy against the oracle, with the lucky solutions (a right answer after a wrong step) apart, is in
curves.json ("labels").
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bon
import prm
import train
import tree_search
from common import cli, data, metrics, tasks
from lab.controls import fresh_items, step_likelihood
from lab.evidence import content, content_free_rule

SOURCES = ("mcts", "oracle", "consensus")
LINES = {"mcts": "-", "oracle": ":", "consensus": "-."}
NAMES = {
    "likelihood": "likelihood head",
    "separator": "separator head",
    "tag": "tag head",
    "implicit": "implicit head",
    "separator_probe": "separator probe (base frozen)",
}


@dataclass
class Args:
    bench: str = field(
        default="out/bench", metadata={"help": "a bench.py output folder: its problems, pools, labels"}
    )
    out: str = field(
        default="out/curves", metadata={"help": "output folder: curves.json, curves.md, curves.png"}
    )
    heads: str = field(
        default="likelihood,separator",
        metadata={
            "help": "comma-separated heads (prm.HEADS), or separator_probe: the separator head on the frozen base"
        },
    )
    labels: str = field(
        default="mcts,oracle,consensus",
        metadata={"help": "comma-separated label sources: mcts | " "oracle | consensus"},
    )
    # bench.py's reward-model settings (its --steps, --lr, --batch-size)
    steps: int = field(default=400, metadata={"range": (1, None), "help": "fine-tuning steps"})
    every: int = field(default=100, metadata={"range": (1, None), "help": "read the model every N steps"})
    lr: float = field(default=1e-4, metadata={"range": (0.0, None), "help": "learning rate"})
    batch_size: int = field(default=32, metadata={"range": (1, None), "help": "batch size"})
    seed: int = field(default=0, metadata={"help": "training seed"})


def oracle_records(problems, records):
    """The same solutions as `records`, labelled by the oracle (meta kept, method "oracle")."""
    out = []
    for r in records:
        p = problems[r["meta"]["problem_id"]]
        labelled = tasks.labelled(p, {"id": r["id"], "steps": r["completions"]}, r["images"][0])
        out.append({**labelled, "meta": {**r["meta"], "method": "oracle"}})
    return out


def consensus_records(problems, records, source, out):
    """The MCTS labels kept where the base's own step likelihood agrees on the first error (tree_search.consensus).
    The base reads every labelled solution once: OUT/consensus.json names the labels file it kept them from
    (its SHA-256), and a later call with the same labels reads the kept records back."""
    made, kept_file = Path(out) / "consensus.json", Path(out) / "labels_consensus.jsonl"
    source_sha256 = data.file_hash(source)
    if made.exists() and kept_file.exists():
        done = json.loads(made.read_text())
        if done["source_sha256"] == source_sha256:
            kept_ids = {r["id"] for r in data.read_jsonl(kept_file, "labelled")}
            return [r for r in records if r["id"] in kept_ids], done["stats"]
    model, processor = prm.load("tiny", device="cpu")
    images = [tasks.render(problems[r["meta"]["problem_id"]]) for r in records]
    prompts = [r["prompt"] for r in records]
    steps = [r["completions"] for r in records]
    kept, stats = tree_search.consensus(records, step_likelihood(model, processor, images, prompts, steps))
    made.write_text(json.dumps({"source_sha256": source_sha256, "stats": stats}))
    return kept, stats


def label_files(a, problems):
    """{source: (path of its labelled JSONL in OUT, its records)}, each made from bench's labels."""
    src = Path(a.bench) / "labels.jsonl"
    if not src.exists():
        raise FileNotFoundError(f"{src}: no labels; run python bench.py --tune-only --out {a.bench} first")
    records = data.read_jsonl(src, "labelled")
    sources = a.labels.split(",")
    for source in sources:
        cli.choice(source, SOURCES, "--labels")
    by_source = {"mcts": records, "oracle": oracle_records(problems, records)}
    if "consensus" in sources:
        by_source["consensus"], stats = consensus_records(problems, records, src, a.out)
        print(
            f"[curves] consensus: {stats['kept']} of {stats['of']} labelled solutions kept (the base's step "
            f"likelihood below {stats['threshold']:.4f} puts the first error where the tree search does)"
        )
    files = {}
    for source in sources:
        path = Path(a.out) / f"labels_{source}.jsonl"
        # images stay where bench wrote them: absolute paths, so the file reads from OUT
        absolute = [
            {**r, "images": [str((Path(a.bench) / r["images"][0]).resolve())]} for r in by_source[source]
        ]
        data.write_jsonl(path, absolute, "labelled")
        files[source] = (path, by_source[source])
    return files


def run_folder(a, head, source):
    return Path(a.out) / f"{head}-{source}"


def train_run(a, head, source, labels):
    """Fine-tune one PRM on the labels file with bench's settings, keeping the model every a.every steps, in the
    run's folder (run_folder). -> that folder."""
    probe = head == "separator_probe"
    out = run_folder(a, head, source)
    args = train.Args(
        objective="prm",
        model="tiny",
        data=str(labels),
        out=str(out),
        max_steps=a.steps,
        warmup=a.steps // 10,
        lr=a.lr,
        batch_size=a.batch_size,
        seed=a.seed,
        eval_every=a.steps,
        save_every=a.steps,
        keep_every=a.every,
        head="separator" if probe else head,
        probe=probe,
        overwrite=True,
    )
    train.main(args)
    return out


def read_pool(model, processor, problems, cands):
    """{candidate id: step scores} of one pool."""
    scores, _ = prm.score_steps(
        model,
        processor,
        [tasks.render(problems[c["problem_id"]]) for c in cands],
        [problems[c["problem_id"]]["question"] for c in cands],
        [c["steps"] for c in cands],
    )
    return {c["id"]: s for c, s in zip(cands, scores) if s is not None}


def best_of_16(problems, cands, scores, target):
    """Best-of-16 on the pool by each aggregation (exact over subsets): -> ({problem: accuracy} of the best
    aggregation, its name)."""
    pools = bon.make_pools(problems, cands, {"prm": scores})
    by_problem = {
        g: {pid: bon.at_n(bon.prepare(pool, f"max:prm:{g}", target), "max", 16)[0] for pid, pool in pools.items()}
        for g in bon.AGGS
    }
    best = max(bon.AGGS, key=lambda g: sum(by_problem[g].values()))  # ties: the first in AGGS
    return by_problem[best], best


def interval(ci):
    """[lo, hi] of a metrics interval, rounded (None where it has none)."""
    return None if ci.get("lo") is None else [round(ci["lo"], 4), round(ci["hi"], 4)]


def point(model, processor, tune, dev):
    """Every measure of one model on tune (problems, candidates) with the F1 threshold chosen on dev, each with
    its 95% bootstrap interval over tune's contents; "items": what a paired comparison with another step reads
    (each answer's predicted first error, each problem's Best-of-16 and faithful@16)."""
    dev_scores = read_pool(model, processor, *dev)
    kept = [c for c in dev[1] if c["id"] in dev_scores]
    threshold = metrics.choose_threshold(
        [dev_scores[c["id"]] for c in kept], [c["first_error"] for c in kept]
    )
    probs, cands = tune
    scores = read_pool(model, processor, probs, cands)
    kept = [c for c in cands if c["id"] in scores]
    pred = {c["id"]: metrics.predicted_first_error(scores[c["id"]], threshold) for c in kept}
    contents = [content(probs[c["problem_id"]]) for c in kept]
    f1 = metrics.first_error_f1_ci(list(pred.values()), [c["first_error"] for c in kept], contents)
    fresh = [(x, content(probs[c["problem_id"]])) for c in kept
             for x in fresh_items(c, probs[c["problem_id"]], scores[c["id"]])]
    auc = metrics.auc_ci([x["score"] for x, _ in fresh], [x["label"] for x, _ in fresh], [k for _, k in fresh])
    bo16, agg = best_of_16(list(probs.values()), cands, scores, "correct")
    faithful, agg_f = best_of_16(list(probs.values()), cands, scores, "faithful")

    def mean_ci(by_problem):  # a per-problem mean and its interval over contents
        ci = metrics.bootstrap(list(by_problem.values()), [content(probs[pid]) for pid in by_problem])
        return round(ci["mean"], 4), interval(ci)

    (bo16_mean, bo16_ci), (faithful_mean, faithful_ci) = mean_ci(bo16), mean_ci(faithful)
    return {
        "first_error_f1": round(f1["mean"], 4),
        "first_error_f1_ci": interval(f1),
        "threshold": threshold,
        "fresh_auc": round(auc["mean"], 4),
        "fresh_auc_ci": interval(auc),
        "bo16": bo16_mean,
        "bo16_ci": bo16_ci,
        "bo16_aggregation": agg,
        "faithful16": faithful_mean,
        "faithful16_ci": faithful_ci,
        "faithful16_aggregation": agg_f,
        "items": {"pred": pred, "bo16": bo16, "faithful16": faithful},
    }


def change(first, last, tune):
    """The last point minus the first, paired: first-error F1 over the same answers, Best-of-16 and faithful@16
    over the same problems (95% intervals over tune's contents)."""
    probs, cands = tune
    answers = [c for c in cands if c["id"] in first["items"]["pred"] and c["id"] in last["items"]["pred"]]
    f1 = metrics.first_error_f1_ci(
        [last["items"]["pred"][c["id"]] for c in answers],
        [c["first_error"] for c in answers],
        [content(probs[c["problem_id"]]) for c in answers],
        pred_b=[first["items"]["pred"][c["id"]] for c in answers],
    )
    out = {"first_error_f1": {"mean": round(f1["mean"], 4), "ci": interval(f1)}}
    for key in ("bo16", "faithful16"):
        ids = sorted(first["items"][key])
        ci = metrics.paired([last["items"][key][p] for p in ids], [first["items"][key][p] for p in ids],
                            [content(probs[p]) for p in ids])
        out[key] = {"mean": round(ci["mean"], 4), "ci": interval(ci)}
    return out


def references(tune, dev_problems, dev_cands):
    """What reads no labels, on the same tune pool: majority vote's Best-of-16 and faithful@16, and the
    content-free first-error rule (chosen on dev)."""
    probs, cands = tune
    pools = bon.make_pools(list(probs.values()), cands)
    rule = content_free_rule(dev_problems, dev_cands)
    pred = [rule.get(probs[c["problem_id"]]["family"], -1) for c in cands]

    def majority(target):
        return round(
            sum(bon.at_n(bon.prepare(pool, "majority", target), "majority", 16)[0] for pool in pools.values())
            / len(pools),
            4,
        )

    return {
        "majority_bo16": majority("correct"),
        "majority_faithful16": majority("faithful"),
        "content_free_f1": round(metrics.f1_of_predictions(pred, [c["first_error"] for c in cands]), 4),
    }


MEASURES = 2  # the version of what point() measures: a cached run with another is read again (not retrained)


def curve(a, head, source, labels, tune, dev):
    """One run's points, trained and read, or read back from OUT/RUN/points.json when a run with the same settings
    and labels left it there (two processes with other --heads can share OUT; a killed run redoes one run). A run
    whose models were kept but read with an older point() is read again without training."""
    settings = {
        "head": head,
        "labels": source,
        "labels_sha256": data.file_hash(labels),
        "bench": a.bench,
        **{k: getattr(a, k) for k in ("steps", "every", "lr", "batch_size", "seed")},
    }
    done, folder = run_folder(a, head, source) / "points.json", run_folder(a, head, source)
    kept = json.loads(done.read_text()) if done.exists() else {}
    trained = kept.get("settings") == settings  # the same models: the kept snapshots can be read again
    if trained and kept.get("measures") == MEASURES:
        print(f"[curves] {head} {source}: read back from {done}")
        return kept["points"], kept["seconds"]
    t0 = time.time()
    snapshots = sorted(folder.glob("step-*"))
    if not (trained and len(snapshots) == a.steps // a.every + 1):
        train_run(a, head, source, labels)
        snapshots = sorted(folder.glob("step-*"))
    points = []
    for snap in snapshots:
        model, processor = prm.load(str(snap), device="cpu")
        points.append({"step": int(snap.name.removeprefix("step-")), **point(model, processor, tune, dev)})
        print(f"[curves] {head} {source} step {points[-1]['step']}: "
              f"{json.dumps({k: v for k, v in points[-1].items() if k != 'items'})}")
    seconds = round(time.time() - t0, 1) + (kept.get("seconds", 0.0) if trained else 0.0)  # training included
    done.write_text(json.dumps({"settings": settings, "measures": MEASURES, "points": points, "seconds": seconds}))
    return points, seconds


def with_ci(value, ci):
    """0.784 [0.741, 0.822]; the value alone where it has no interval."""
    return f"{value:.3f}" if ci is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def signed(change):
    ci = change["ci"]
    return f"{change['mean']:+.3f}" + ("" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]")


def table(res):
    """The curves as one markdown table: a row per (head, labels, step), each measure with its 95% interval."""
    ref = res["references"]
    lines = [
        "| head | labels | step | first-error F1 | fresh-step AUC | Best-of-16 | faithful@16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in res["runs"]:
        for p in run["points"]:
            lines.append(
                f"| {NAMES.get(run['head'], run['head'])} | {run['labels']} | {p['step']} | "
                f"{with_ci(p['first_error_f1'], p.get('first_error_f1_ci'))} | "
                f"{with_ci(p['fresh_auc'], p.get('fresh_auc_ci'))} | "
                f"{with_ci(p['bo16'], p.get('bo16_ci'))} ({p['bo16_aggregation']}) | "
                f"{with_ci(p['faithful16'], p.get('faithful16_ci'))} |"
            )
    lines.append(
        f"| majority vote (no model) | - | - | - | - | {ref['majority_bo16']:.3f} | "
        f"{ref['majority_faithful16']:.3f} |"
    )
    lines.append(f"| content-free rule (no model) | - | - | {ref['content_free_f1']:.3f} | - | - | - |")
    return "\n".join(lines)


def change_table(res):
    """Each run's last point minus its step 0, paired, with 95% intervals: did fine-tuning move it?"""
    lines = [
        "| head | labels | steps | first-error F1 | Best-of-16 | faithful@16 |",
        "|---|---|---|---|---|---|",
    ]
    for run in res["runs"]:
        c = run["change"]
        lines.append(
            f"| {NAMES.get(run['head'], run['head'])} | {run['labels']} | 0 -> {run['points'][-1]['step']} | "
            f"{signed(c['first_error_f1'])} | {signed(c['bo16'])} | {signed(c['faithful16'])} |"
        )
    return "\n".join(lines)


def label_table(quality):
    lines = [
        "| labels | part | records | first error as the oracle's | step labels as the oracle's |",
        "|---|---|---|---|---|",
    ]
    for source, parts in quality.items():
        for part, q in parts.items():
            agree = "-" if q["first_error_agreement"] is None else f"{q['first_error_agreement']:.3f}"
            steps = "-" if q["step_label_accuracy"] is None else f"{q['step_label_accuracy']:.3f}"
            lines.append(f"| {source} | {part} | {q['records']} | {agree} | {steps} |")
    return "\n".join(lines)


def plot(res, path):
    """Four panels, one line per (head, labels) with its 95% interval as a faint band, the label-free references
    dashed."""
    from matplotlib.figure import Figure  # here: importing this module needs no matplotlib

    panels = [
        ("first_error_f1", "first-error F1", "content_free_f1"),
        ("fresh_auc", "fresh-step AUC", None),
        ("bo16", "Best-of-16 accuracy", "majority_bo16"),
        ("faithful16", "faithful@16", "majority_faithful16"),
    ]
    fig = Figure(figsize=(13, 7.5))
    axes = fig.subplots(2, 2)
    for ax, (key, title, ref) in zip(axes.flat, panels):
        for run in res["runs"]:  # a colour per head, a line style per label source
            colour = f"C{list(NAMES).index(run['head'])}"
            ax.plot(
                [p["step"] for p in run["points"]],
                [p[key] for p in run["points"]],
                LINES[run["labels"]],
                marker="o",
                color=colour,
                label=f"{NAMES.get(run['head'], run['head'])}, {run['labels']} labels",
            )
            spans = [p.get(f"{key}_ci") for p in run["points"]]
            if all(spans):  # the 95% interval as a band of the line's colour
                ax.fill_between([p["step"] for p in run["points"]], [lo for lo, _ in spans],
                                [hi for _, hi in spans], color=colour, alpha=0.08, linewidth=0)
        if ref:
            ax.axhline(
                res["references"][ref],
                color="grey",
                linestyle="--",
                label="content-free rule" if ref == "content_free_f1" else "majority vote",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fine-tuning step (0: the head before training)")
        ax.grid(alpha=0.3)
    handles = {}  # one legend for the four panels: every line once, the references after them
    for ax in axes.flat:
        for line in ax.get_lines():
            handles.setdefault(line.get_label(), line)
    fig.legend(
        list(handles.values()),
        list(handles),
        fontsize=8,
        loc="center right",
        title="head, label source (colour: head; line: labels)",
        title_fontsize=8,
    )
    fig.suptitle(
        f"Learning curves on the tune split (the tiny base's own answers, {res['tune_problems']} problems; "
        f"F1 threshold chosen on dev)",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.savefig(path, dpi=110)


def main(a: Args):
    t0, out, bench = time.time(), Path(a.out), Path(a.bench)
    out.mkdir(parents=True, exist_ok=True)
    read = {s: data.read_jsonl(bench / f"problems_{s}.jsonl", "problem") for s in ("train", "tune", "dev")}
    problems = {s: {p["id"]: p for p in ps} for s, ps in read.items()}
    tune = (problems["tune"], data.read_jsonl(bench / "cands_tune_base.jsonl", "candidate"))
    dev = (problems["dev"], data.read_jsonl(bench / "cands_dev_base.jsonl", "candidate"))
    files = label_files(a, problems["train"])
    tau = json.loads((bench / "tau.json").read_text())["out"]["tau"] if (bench / "tau.json").exists() else 0.0
    res = {
        "settings": asdict(a),
        "tune_problems": len(tune[0]),
        "runs": [],
        "references": references(tune, read["dev"], dev[1]),
        "labels": {
            source: tree_search.label_quality(problems["train"], records, tau or 0.0)
            for source, (_, records) in files.items()
        },
    }
    heads = a.heads.split(",")
    for head in heads:
        cli.choice(head, (*prm.HEADS, "separator_probe"), "--heads")
    for head in heads:
        for source, (path, _) in files.items():
            points, seconds = curve(a, head, source, path, tune, dev)
            res["runs"].append({"head": head, "labels": source, "change": change(points[0], points[-1], tune),
                                "points": [{k: v for k, v in p.items() if k != "items"} for p in points],
                                "seconds": seconds})
    res["seconds"] = round(time.time() - t0, 1)  # this call; each run's own time is in its entry
    runs_seconds = sum(run["seconds"] for run in res["runs"])
    (out / "curves.json").write_text(json.dumps(res, indent=1))
    command = (f"python -m lab.curves --bench {a.bench} --heads {a.heads} --labels {a.labels} "
               f"--steps {a.steps} --every {a.every}")
    summary = (f"{len(res['runs'])} runs, {runs_seconds:.0f} s of wall time in all (each run trains and reads its "
               f"models; this call {res['seconds']:.0f} s). Tune: {res['tune_problems']} problems, {len(tune[1])} "
               "answers of the base; 95% bootstrap intervals over tune's contents (no multiplicity adjustment: "
               "the curves choose settings, the test split's comparisons in bench carry the findings)")
    (out / "curves.md").write_text(
        f"# Learning curves on tune\n\n`{command}`: {summary}\n\n{table(res)}\n\n"
        f"## From step 0 to the last step, paired\n\n{change_table(res)}\n\n"
        f"## Each label source against the oracle (the same train solutions)\n\n{label_table(res['labels'])}\n"
    )
    plot(res, out / "curves.png")
    print(table(res))
    return res


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
