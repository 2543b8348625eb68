"""Judges that learned to judge, measured on dev: how well each one solves, how well it rates others' answers.

    python -m lab.judges                      # out/judges/{judges.json, judges.md}
    python -m lab.judges --judges tiny,tiny-judge-short --dev-n 8 --tune-n 8 --eval-n 16    # a quick look
    python -m lab.judges --split tune --judges out/judge-sweep/soft-lr1e-3/step-000600    # choosing a recipe

--split tune measures on tune problems alone (the PRM threshold chosen on other tune problems, solving on more
tune problems), so that a recipe is chosen without a look at dev: lab/judge_recipes.py runs it over its probes.

For each judge (a shipped short name or a checkpoint folder; "tiny", the base that never learned to judge, is
the reference) and a pool of synthetic candidates a problem (policy.candidates, half weak, half strong), the
judge rates every step (PRM mode, judge.judge_steps) and every whole answer (ORM mode, judge.judge_answers),
read by logits (the expected 1-5 score after "Overall Score: "). From those scores:
- solving: the judge's own greedy final-answer accuracy on dev problems (train.evaluate_sft, answer_all);
- PRM first-error F1 (ProcessBench): the threshold chosen on the tune pool (metrics.choose_threshold), never
  on dev, then the F1 on the dev pool;
- ORM answer AUC on the dev pool: how well the answer score ranks right answers above wrong ones;
- Best-of-16 on the dev pool: the exact expected accuracy of the pick from 16 (bon.problem_rows, bon.at_n) by
  the ORM score, by the PRM steps' minimum and by the hybrid (the mean of the last 2 step scores), against one
  random sample (the pool's mean accuracy) and the majority answer.

Expected output of the default run (judges.md; 7:06 on 2 CPU cores, nothing else running, OMP_NUM_THREADS=2):

| judge | solving | PRM F1 (threshold) | step AUC count / arith / text_arith | ORM AUC | random | majority | ORM | PRM min | hybrid last2 |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| tiny | 0.635 | 0.201 (0.24) | 0.46 / 0.45 / 0.41 | 0.473 | 0.518 | 0.812 | 0.229 | 0.183 | 0.125 |
| tiny-judge-short | 0.531 | 0.438 (0.50) | 0.57 / 0.54 / 0.59 | 0.570 | 0.518 | 0.812 | 0.229 | 0.208 | 0.146 |
| tiny-judge-long | 0.490 | 0.409 (0.56) | 0.51 / 0.51 / 0.63 | 0.534 | 0.518 | 0.812 | 0.188 | 0.267 | 0.250 |
| tiny-judge-strong | 0.385 | 0.343 (0.47) | 0.52 / 0.53 / 0.64 | 0.559 | 0.518 | 0.812 | 0.250 | 0.243 | 0.229 |
| tiny-judge-strong-long | 0.469 | 0.454 (0.58) | 0.51 / 0.57 / 0.68 | 0.521 | 0.518 | 0.812 | 0.250 | 0.246 | 0.229 |
| tiny-judge-reference | 0.729 | 0.566 (0.46) | 0.69 / 0.46 / 0.69 | 0.837 | 0.518 | 0.812 | 0.792 | 0.443 | 0.229 |

beats one random sample in Best-of-16: tiny-judge-reference orm 0.792 > 0.518.

(the last five columns: Best-of-16.) Rating training doubles the first-error F1 of the base and lifts its
answer AUC above 0.5, but the judges that rate at once pick no better than one random sample: a problem's right
answers are mostly one text (8.3 right a dev problem, 1.5 distinct), so they share one score, while its wrong
answers are diverse (7.7, 5.4 distinct), and the top of several noisy wrong scores outbids the one right score
unless the ranking is strong. The stronger solver (tiny-long) did not make a better short-trained judge (F1 0.343
against 0.438). tiny-judge-reference reasons before it rates (it solves the question itself, then writes the rated
step's numbers against its own, "Check: 3 vs 7", then its score; its card says how it was made): its answer AUC
is 0.837 and in ORM mode it beats one random sample, though not majority vote. In PRM mode it does not: its own
counts are often wrong, and it rates a right count down when its own differs.

The recipes were compared on tune (lab/judge_recipes.py: the score learned against its verdict's whole
RATING_NOISE row, learning rates 3e-4 to 3e-3, answers to one problem side by side, up to 1,200 steps, checking
and reference-guided judges): tiny-judge-reference's recipe is the only one whose judge beat one random sample
there (its table).
"""
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

import bon
import judge
import policy
import train
from common import cli, metrics, tasks
from common.answers import match_answer

# The Best-of-N rules read (bon.py's rule syntax) over the score keys judge_pools writes.
RULES = {"random": "random", "majority": "majority", "orm": "max:judge_orm", "prm_min": "max:judge_prm:min",
         "hybrid_last2": "max:judge_prm:last2"}
N = 16  # Best-of-16: the whole pool
STEP_KINDS = ("count", "arith", "text_arith")  # the step kinds a judge must check (tasks.gold_steps)
# The base that never learned to judge (the reference), then the shipped judges (common.model.SHIPPED)
JUDGES = ("tiny", "tiny-judge-short", "tiny-judge-long", "tiny-judge-strong", "tiny-judge-strong-long",
          "tiny-judge-reference")


@dataclass
class Args:
    judges: str = field(default=",".join(JUDGES),
                        metadata={"help": "comma-separated judges: shipped short names (model.SHIPPED) or "
                                          "checkpoint folders"})
    split: str = field(default="dev", metadata={
        "choices": ["dev", "tune"],
        "help": "dev: measure on --dev-n dev problems, the PRM threshold chosen on --tune-n tune problems | tune "
                "(choosing a recipe, dev unseen): measure on --dev-n tune problems, the threshold chosen on "
                "--tune-n other tune problems, solving on --eval-n more tune problems"})
    dev_n: int = field(default=48, metadata={"range": (1, None), "help": "problems measured (of --split)"})
    tune_n: int = field(default=32, metadata={"range": (1, None),
                                              "help": "tune problems judged (they choose the PRM threshold)"})
    candidates: int = field(default=16, metadata={"range": (2, None),
                                                  "help": "candidates a problem (even: half weak)"})
    eval_n: int = field(default=96, metadata={"range": (1, None),
                                              "help": "dev problems of the solving accuracy (evaluate_sft)"})
    seed: int = field(default=0, metadata={"help": "seed of the problems and candidates"})
    batch_size: int = field(default=16, metadata={"range": (1, None),
                                                  "help": "judge prompts per forward pass"})
    out: str = field(default="out/judges", metadata={"help": "output folder: judges.json, judges.md"})
    device: str = field(default="", metadata={"type": cli.device,
                                              "help": "cpu | cuda (default: cuda if available)"})


def make_pool(split, n, k, seed):
    """n problems of `split` and k candidates each from the synthetic sampler, half weak and half strong."""
    problems = tasks.make_problems(n, seed, split)
    cands = []
    for p in problems:
        for strength in ("weak", "strong"):
            cands += policy.candidates(p, k // 2, seed, strength)
    return problems, cands


def split_pools(a):
    """(the threshold pool, the measured pool) of --split: dev problems measured with the threshold chosen on
    tune problems, or (--split tune) tune problems 0..tune_n-1 for the threshold and the next dev_n measured
    (problem i depends only on (seed, split, i): the two sets are disjoint)."""
    if a.split == "dev":
        return make_pool("tune", a.tune_n, a.candidates, a.seed), make_pool("dev", a.dev_n, a.candidates, a.seed)
    problems, cands = make_pool("tune", a.tune_n + a.dev_n, a.candidates, a.seed)
    first = {p["id"] for p in problems[:a.tune_n]}
    return ((problems[:a.tune_n], [c for c in cands if c["problem_id"] in first]),
            (problems[a.tune_n:], [c for c in cands if c["problem_id"] not in first]))


def solving(model, processor, a):
    """The judge's own greedy final-answer accuracy: train.evaluate_sft's answer_all on --eval-n dev problems;
    with --split tune, the same on --eval-n tune problems of another seed (so dev stays unseen)."""
    if a.split == "dev":
        return train.evaluate_sft(model, processor, train.Args(eval_n=a.eval_n), a.eval_n)["answer_all"]
    probs = tasks.make_problems(a.eval_n, a.seed + 1000, "tune")
    hits = 0
    for i in range(0, len(probs), 64):
        chunk = probs[i:i + 64]
        outs = policy.solve(model, processor, [tasks.render(p) for p in chunk], [p["question"] for p in chunk])
        hits += sum(match_answer(o["answer"], p["answer"]) for o, p in zip(outs, chunk))
    return round(hits / len(probs), 4)


def judge_pool(j, problems, cands, chunk=32):
    """Every candidate rated by judge j: ({candidate id: [a score a step]}, {candidate id: its answer's
    score}), `chunk` candidates at a time (a progress bar over the chunks)."""
    probs = {p["id"]: p for p in problems}
    images = {pid: tasks.render(p) for pid, p in probs.items()}
    step_scores, answer_scores = {}, {}
    for i in tqdm(range(0, len(cands), chunk), desc=f"judging {len(cands)} answers", leave=False):
        part = [c for c in cands[i:i + chunk] if c["steps"]]
        args = ([images[c["problem_id"]] for c in part], [probs[c["problem_id"]]["question"] for c in part],
                [c["steps"] for c in part])
        steps, _ = judge.judge_steps(j, *args)
        answers, _ = judge.judge_answers(j, *args)
        step_scores.update({c["id"]: s for c, s in zip(part, steps)})
        answer_scores.update({c["id"]: s for c, s in zip(part, answers)})
    return step_scores, answer_scores


def first_error_f1(tune, tune_steps, dev, dev_steps):
    """ProcessBench F1 on dev, its threshold chosen on tune: {"f1", "threshold", "acc_error", ...}."""
    def scored(cands, steps):
        kept = [c for c in cands if c["id"] in steps]
        return [steps[c["id"]] for c in kept], [c["first_error"] for c in kept]
    threshold = metrics.choose_threshold(*scored(tune[1], tune_steps))
    res = metrics.first_error_f1(*scored(dev[1], dev_steps), threshold)
    return {**res, "threshold": threshold}


def step_auc_by_kind(problems, cands, step_scores):
    """{step kind: AUC of the PRM-mode scores of right against wrong steps of that kind}, over the steps up to and
    including each answer's first error (the steps the first-error F1 reads; a kind of tasks.gold_steps: count
    steps read the image, arith and text_arith steps the arithmetic). None where a kind has steps of one label."""
    probs = {p["id"]: p for p in problems}
    scored = {}
    for c in cands:
        if c["id"] not in step_scores:
            continue
        gold = tasks.gold_steps(probs[c["problem_id"]])
        first = c["first_error"] if c["first_error"] != -1 else len(c["steps"]) - 1
        for k, score in enumerate(step_scores[c["id"]][:first + 1]):
            kind = gold[k][1] if k < len(gold) else "extra"
            scored.setdefault(kind, []).append((score, k != c["first_error"]))
    out = {}
    for kind, pairs in sorted(scored.items()):
        labels = [right for _, right in pairs]
        one_label = sum(labels) in (0, len(labels))
        out[kind] = None if one_label else metrics.auc_fast([x for x, _ in pairs], labels)
    return out


def best_of_n(problems, cands, step_scores, answer_scores, n=N):
    """{rule name: the mean over problems of the exact expected accuracy of its pick from n}."""
    pools = bon.make_pools(problems, cands, {"judge_prm": step_scores, "judge_orm": answer_scores})
    rows = bon.problem_rows(pools, RULES, ns=(n,))
    return {name: sum(r["acc"][str(n)] for r in rows if r["method"] == name) / len(pools) for name in RULES}


def measure(name, a, tune, dev):
    """One judge's row: its solving accuracy and its judging quality on the measured pool (dev), its PRM
    threshold chosen on the other (tune); with --split tune both are pools of tune problems."""
    t0 = time.time()
    j = judge.load_judge(name, "logits", a.batch_size, a.device or None)
    model, processor = j.model, j.processor
    tune_steps, _ = judge_pool(j, *tune)
    dev_steps, dev_answers = judge_pool(j, *dev)
    rated = [c for c in dev[1] if c["id"] in dev_answers]
    auc = metrics.auc_fast([dev_answers[c["id"]] for c in rated], [c["correct"] for c in rated])
    return {"judge": name, "solving": solving(model, processor, a),
            "prm_f1": first_error_f1(tune, tune_steps, dev, dev_steps), "orm_auc": auc,
            "step_auc": step_auc_by_kind(*dev, dev_steps),
            "bon": best_of_n(*dev, dev_steps, dev_answers), "seconds": round(time.time() - t0, 1)}


def table(rows, split="dev"):
    """The markdown table of judges.md: one row a judge (solving on `split`'s problems)."""
    lines = [f"| judge | solving ({split} answers) | PRM first-error F1 (threshold) | "
             "PRM step AUC: count / arith / text_arith | ORM answer AUC | "
             "Bo16 random | Bo16 majority | Bo16 ORM | Bo16 PRM min | Bo16 hybrid last2 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f1 = f"{r['prm_f1']['f1']:.3f} ({r['prm_f1']['threshold']:.2f})"
        by_kind = " / ".join("-" if r["step_auc"].get(k) is None else f"{r['step_auc'][k]:.2f}"
                             for k in STEP_KINDS)
        bo16 = " | ".join(f"{r['bon'][k]:.3f}" for k in RULES)
        lines.append(f"| {r['judge']} | {r['solving']:.3f} | {f1} | {by_kind} | {r['orm_auc']:.3f} | {bo16} |")
    return "\n".join(lines)


def beats_random(rows):
    """[(judge, mode, its Best-of-16, random's)] wherever a judge's pick beats one random sample."""
    return [(r["judge"], mode, r["bon"][mode], r["bon"]["random"]) for r in rows
            for mode in ("orm", "prm_min", "hybrid_last2") if r["bon"][mode] > r["bon"]["random"]]


def main(a: Args):
    if a.candidates % 2:
        raise ValueError(f"--candidates {a.candidates}: expected an even number (half weak, half strong)")
    names = [x.strip() for x in a.judges.split(",") if x.strip()]
    if not names:
        raise ValueError("--judges: give at least one judge")
    t0, out = time.time(), Path(a.out)
    tune, dev = split_pools(a)
    rows = []
    for name in tqdm(names, desc="judges"):
        rows.append(measure(name, a, tune, dev))
        tqdm.write(f"{name}: {json.dumps(rows[-1])}")
    wins = beats_random(rows)
    if wins:
        verdict = "beats one random sample in Best-of-16: " + "; ".join(
            f"{j} {mode} {x:.3f} > {y:.3f}" for j, mode, x, y in wins)
    else:
        verdict = "no judge beats one random sample in Best-of-16 in any mode"
    out.mkdir(parents=True, exist_ok=True)
    res = {"settings": asdict(a), "judges": rows, "beats_random": wins, "seconds": round(time.time() - t0, 1)}
    (out / "judges.json").write_text(json.dumps(res, indent=1))
    other = "other " if a.split == "tune" else ""
    text = (f"Judges on {a.split} ({a.dev_n} problems x {a.candidates} candidates, half weak and half strong; "
            f"PRM threshold chosen on {a.tune_n} {other}tune problems; solving: {a.eval_n} {other}{a.split} "
            f"problems). Scores read by logits.\n\n{table(rows, a.split)}\n\n{verdict}.\n")
    (out / "judges.md").write_text(text)
    print(f"\n{text}\nwrote {out / 'judges.json'} and {out / 'judges.md'} ({res['seconds']:.0f}s)")
    return res


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
