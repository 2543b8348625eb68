"""Choosing the judges' training recipe on tune, with dev unseen: probes trained from the base, each read at
several lengths by lab.judges --split tune.

    OMP_NUM_THREADS=1 python -m lab.judge_recipes                          # every probe: out/judge-sweep/
    OMP_NUM_THREADS=1 python -m lab.judge_recipes --probes soft-lr3e-4      # one probe

Each probe is one `train.py --objective sft --model tiny --data synthetic-judge --rating-loss soft` run (batch
16, 3/4 of it rating examples, the score digit learned against its verdict's whole judge.RATING_NOISE row; 600
steps, its model kept at steps 200, 400 and 600), differing from the others only in PROBES' flags. lab.judges
--split tune then measures the kept models on 48 tune problems x 16 synthetic candidates (the PRM threshold
chosen on 32 other tune problems; solving: 64 more tune problems); no dev problem is read. A probe already
trained (its OUT/config.json exists) is only measured again. Writes out/judge-sweep/tune.md.

Expected output (tune.md; a 600-step probe takes about 5.5 minutes to train and 3.5 to measure on one CPU thread,
the machine shared with another job; the last five columns: Best-of-16). soft-lr1e-3-long was stopped at step
1100 of its 2000-step schedule (its models at steps 500 and 1000 measured; the whole run takes about 18
minutes); soft-lr1e-3-all-long (every row a rating, 1200 steps) took 12 minutes:

| probe/model | solving | PRM F1 (threshold) | ORM AUC | random | majority | ORM | PRM min | hybrid last2 |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
| soft-lr3e-4/step-000200 | 0.531 | 0.388 (0.48) | 0.594 | 0.533 | 0.771 | 0.312 | 0.242 | 0.167 |
| soft-lr3e-4/step-000400 | 0.688 | 0.367 (0.55) | 0.502 | 0.533 | 0.771 | 0.167 | 0.155 | 0.104 |
| soft-lr3e-4/step-000600 | 0.656 | 0.343 (0.51) | 0.522 | 0.533 | 0.771 | 0.167 | 0.168 | 0.104 |
| soft-lr1e-3/step-000200 | 0.531 | 0.404 (0.50) | 0.594 | 0.533 | 0.771 | 0.229 | 0.327 | 0.125 |
| soft-lr1e-3/step-000400 | 0.594 | 0.412 (0.55) | 0.507 | 0.533 | 0.771 | 0.167 | 0.290 | 0.062 |
| soft-lr1e-3/step-000600 | 0.641 | 0.400 (0.52) | 0.507 | 0.533 | 0.771 | 0.188 | 0.310 | 0.146 |
| soft-lr3e-3/step-000200 | 0.141 | 0.418 (0.43) | 0.564 | 0.533 | 0.771 | 0.250 | 0.219 | 0.208 |
| soft-lr3e-3/step-000400 | 0.531 | 0.334 (0.53) | 0.544 | 0.533 | 0.771 | 0.208 | 0.243 | 0.229 |
| soft-lr3e-3/step-000600 | 0.625 | 0.442 (0.53) | 0.547 | 0.533 | 0.771 | 0.167 | 0.245 | 0.271 |
| soft-lr1e-3-group4/step-000200 | 0.547 | 0.415 (0.53) | 0.560 | 0.533 | 0.771 | 0.208 | 0.266 | 0.104 |
| soft-lr1e-3-group4/step-000400 | 0.531 | 0.396 (0.48) | 0.510 | 0.533 | 0.771 | 0.229 | 0.268 | 0.146 |
| soft-lr1e-3-group4/step-000600 | 0.562 | 0.370 (0.55) | 0.501 | 0.533 | 0.771 | 0.292 | 0.280 | 0.125 |
| soft-lr1e-3-long/step-000500 | 0.578 | 0.382 (0.62) | 0.507 | 0.533 | 0.771 | 0.188 | 0.271 | 0.167 |
| soft-lr1e-3-long/step-001000 | 0.516 | 0.421 (0.54) | 0.502 | 0.533 | 0.771 | 0.188 | 0.311 | 0.167 |
| soft-lr1e-3-all-long/step-000600 | 0.062 | 0.319 (0.63) | 0.495 | 0.533 | 0.771 | 0.229 | 0.204 | 0.208 |
| soft-lr1e-3-all-long/step-001200 | 0.062 | 0.397 (0.58) | 0.525 | 0.533 | 0.771 | 0.250 | 0.192 | 0.188 |
| check-lr1e-3/step-000200 | 0.562 | 0.357 (0.58) | 0.458 | 0.533 | 0.771 | 0.125 | 0.254 | 0.104 |
| check-lr1e-3/step-000400 | 0.594 | 0.313 (0.52) | 0.503 | 0.533 | 0.771 | 0.292 | 0.200 | 0.167 |
| check-lr1e-3/step-000600 | 0.656 | 0.318 (0.55) | 0.527 | 0.533 | 0.771 | 0.208 | 0.180 | 0.104 |

For reference, the base and the shipped tiny-judge-short (the sampled digit at lr 3e-3), measured the same way
(python -m lab.judges --split tune --judges tiny,tiny-judge-short --eval-n 64):

| tiny | 0.672 | 0.301 (0.24) | 0.536 | 0.533 | 0.771 | 0.188 | 0.241 | 0.229 |
| tiny-judge-short | 0.562 | 0.367 (0.50) | 0.506 | 0.533 | 0.771 | 0.208 | 0.173 | 0.125 |

No probe's judge beats one random sample (0.533) in Best-of-16 in any mode: its answer AUC stays at 0.50-0.59,
and within one problem it gives nearly one score to every answer (soft-lr1e-3 at step 600: answer AUC within a
problem 0.48 over 12 tune problems; a step's score follows its position in the solution, not whether it is
right). The train loss (the digit's soft cross-entropy plus the other tokens' mean) flattens by step 300 at
1.45-1.48 whatever the learning rate or the grouping (1.42-1.43 with every row a rating, which loses solving).
check-lr1e-3, a checking judge (the sampled digit, after "Check: " and the step as it should read or the whole
solution worked out; 600 steps in 213 s on two threads, each kept model measured in about 3 minutes), does no
better: its checks misread colours and operands (at step 600 its whole-solution check is the right solution on 6 of
40 tune problems, while it solves 0.66 of the bare questions), and its score does not follow its check.
So no recipe was chosen from these.

Judges that reason before they rate. A reference-guided judge (train.py --rating-reference) solves the question
itself first (greedy) and rates with its own solution set between the question and the rated work, as in MT-Bench's
reference-guided grading; in training the reference is the gold solution. A checking judge writes a check before
its score (--rating-check): the step as it should read ("step"), the rated step's numbers against the reference's
("numbers": "Check: 3 vs 7"), or those and whether they agree ("agree": "Check: 3 vs 7: they differ"). The
numbers probes run longer: numbers-reference-lr1e-3-long 2,000 steps (about 15 minutes on two threads), then
numbers-reference-lr1e-3-longer 3,000 more from its end (about 37 minutes, another job beside it), and
agree-reference-lr1e-3 1,000 steps from the longer one's model at step 1,500. Measured the same way; the new
column is the PRM-mode step AUC, right against wrong steps up to the first error, by the kind of step (count steps
read the image, arith and text_arith steps the arithmetic):

| probe/model | solving | PRM F1 (threshold) | step AUC count / arith / text_arith | ORM AUC | random | majority | ORM | PRM min | hybrid last2 |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| reference-lr1e-3/step-000200 | 0.516 | 0.433 (0.50) | | 0.616 | 0.533 | 0.771 | 0.312 | 0.231 | 0.146 |
| reference-lr1e-3/step-000400 | 0.688 | 0.367 (0.55) | | 0.555 | 0.533 | 0.771 | 0.250 | 0.299 | 0.146 |
| reference-lr1e-3/step-000600 | 0.625 | 0.377 (0.56) | | 0.518 | 0.533 | 0.771 | 0.292 | 0.325 | 0.229 |
| check-reference-lr1e-3/step-000200 | 0.453 | 0.281 (0.55) | | 0.405 | 0.533 | 0.771 | 0.146 | 0.228 | 0.188 |
| check-reference-lr1e-3/step-000400 | 0.500 | 0.365 (0.56) | | 0.510 | 0.533 | 0.771 | 0.333 | 0.265 | 0.250 |
| check-reference-lr1e-3/step-000600 | 0.641 | 0.394 (0.52) | | 0.551 | 0.533 | 0.771 | 0.292 | 0.327 | 0.188 |
| numbers-reference-lr1e-3-long/step-001000 | 0.656 | 0.389 (0.57) | 0.53 / 0.47 / 0.65 | 0.541 | 0.533 | 0.771 | 0.167 | 0.385 | 0.250 |
| numbers-reference-lr1e-3-long/step-002000 | 0.625 | 0.468 (0.54) | 0.58 / 0.46 / 0.68 | 0.634 | 0.533 | 0.771 | 0.417 | 0.451 | 0.250 |
| numbers-reference-lr1e-3-longer/step-001500 | 0.703 | 0.404 (0.63) | 0.51 / 0.46 / 0.68 | 0.645 | 0.533 | 0.771 | 0.250 | 0.441 | 0.167 |
| numbers-reference-lr1e-3-longer/step-003000 | 0.672 | 0.482 (0.46) | 0.57 / 0.64 / 0.70 | 0.662 | 0.533 | 0.771 | **0.562** | 0.488 | 0.229 |
| agree-reference-lr1e-3/step-000500 | 0.750 | 0.423 (0.65) | 0.63 / 0.67 / 0.57 | 0.648 | 0.533 | 0.771 | 0.417 | 0.339 | 0.229 |
| agree-reference-lr1e-3/step-001000 | 0.688 | 0.373 (0.19) | 0.60 / 0.68 / 0.49 | 0.619 | 0.533 | 0.771 | 0.438 | 0.338 | 0.250 |

(The first six rows were measured before lab.judges read the step AUC by kind.) One model beats one random sample
in Best-of-16 on tune: the numbers-checking, reference-guided judge after 5,000 steps, in ORM mode (0.562 against
0.533, 48 problems, no interval). It is the only recipe whose answer AUC keeps rising with training (0.54, 0.63,
0.65, 0.66). What it writes, read on tune: its checks copy the numbers right (for a step of 2 + 5 = 7 beside a
reference that has it, "Check: 2, 5, 7 vs 2, 5, 7"), so where it errs it is mostly its own solution that is wrong
(it counts 6 green shapes where there are 3, and rates the right "3" down: "Check: 3 vs 6"): as a judge it is as
good as it solves. Its score follows its check only loosely (at step 1,500 of the longer run, expected scores
0.85 for "10 vs 10" and 0.30 for "10 vs 11", but 0.67 for "3 vs 6").
The agree judge's score follows its written verdict closely ("differ" about 0.2, "agree" about 0.85), but its
verdicts are wrong more often, and it stays below random. Without a check, a reference does not help: with exact
scores instead of noisy ones (train.py --rating-noise exact, every row a rating, 600 steps) the digit's training
loss stays at 0.58 with the gold reference beside and 0.60 without, so the base does not learn to compare a step
with the reference in one position; written out as a check, the comparison is learned slowly.
"""
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common import cli
from lab import judges

# fork here: the probes. Each is train.py's flags on top of COMMON (a later flag wins); its models kept every
# --keep-every steps are what lab.judges measures.
PROBES = {
    "soft-lr3e-4": ["--lr", "3e-4"],
    "soft-lr1e-3": ["--lr", "1e-3"],
    "soft-lr3e-3": ["--lr", "3e-3"],
    "soft-lr1e-3-group4": ["--lr", "1e-3", "--rating-group", "4"],
    "soft-lr1e-3-long": ["--lr", "1e-3", "--max-steps", "2000", "--keep-every", "500", "--eval-every", "1000"],
    "soft-lr1e-3-all-long": ["--lr", "1e-3", "--rating-share", "1.0", "--max-steps", "1200",
                             "--keep-every", "600", "--eval-every", "1200"],  # every row a rating
    # a checking judge: it writes the step as it should read (or the whole solution) before its score
    "check-lr1e-3": ["--lr", "1e-3", "--rating-loss", "sample", "--rating-check", "step"],
    # a reference-guided judge: the gold solution beside the rated work in training, its own solution at work
    "reference-lr1e-3": ["--lr", "1e-3", "--rating-reference"],
    # both: it copies the step as the reference has it, then rates
    "check-reference-lr1e-3": ["--lr", "1e-3", "--rating-loss", "sample", "--rating-check", "step",
                               "--rating-reference"],
    # it writes the rated step's numbers against the reference's ("3 vs 7"), then rates
    "numbers-reference-lr1e-3-long": ["--lr", "1e-3", "--rating-loss", "sample", "--rating-check", "numbers",
                                      "--rating-reference", "--max-steps", "2000", "--keep-every", "1000"],
    # the same, 3000 steps more from where it ended (a new schedule): run it after numbers-reference-lr1e-3-long
    "numbers-reference-lr1e-3-longer": ["--lr", "1e-3", "--rating-loss", "sample", "--rating-check", "numbers",
                                        "--rating-reference", "--max-steps", "3000", "--keep-every", "1500",
                                        "--model", "out/judge-sweep/numbers-reference-lr1e-3-long/step-002000"],
    # it writes whether the numbers agree before its score, 1000 steps from numbers-reference-lr1e-3-longer's
    # model at step 1500 (run that first)
    "agree-reference-lr1e-3": ["--lr", "1e-3", "--rating-loss", "sample", "--rating-check", "agree",
                               "--rating-reference", "--max-steps", "1000", "--keep-every", "500",
                               "--model", "out/judge-sweep/numbers-reference-lr1e-3-longer/step-001500"],
}
COMMON = ["--objective", "sft", "--model", "tiny", "--data", "synthetic-judge", "--rating-loss", "soft",
          "--rating-share", "0.75", "--max-steps", "600", "--batch-size", "16", "--warmup", "20",
          "--keep-every", "200", "--eval-every", "1000000", "--eval-n", "32", "--save-every", "1000000",
          "--overwrite"]


def flag(name, flags):
    """The value of --name in flags (the last one given)."""
    return [flags[i + 1] for i, f in enumerate(flags) if f == name][-1]


def kept_steps(name):
    """The steps at which probe `name` keeps its model (OUT/step-N): every --keep-every up to --max-steps."""
    flags = COMMON + PROBES[name]
    every, steps = int(flag("--keep-every", flags)), int(flag("--max-steps", flags))
    return list(range(every, steps + 1, every))


@dataclass
class Args:
    probes: str = field(default=",".join(PROBES), metadata={"help": "comma-separated names of PROBES"})
    out: str = field(default="out/judge-sweep", metadata={"help": "a folder a probe, and tune.md"})


def train_probe(name, out):
    """Train probe `name` into out/name unless it is there already; its log in out/name.log."""
    folder = Path(out) / name
    if (folder / "config.json").exists():
        return
    cmd = [sys.executable, "train.py", *COMMON, *PROBES[name], "--out", str(folder)]
    print(" ".join(cmd[1:]), flush=True)
    with open(Path(out) / f"{name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])


def main(a: Args):
    names = [x.strip() for x in a.probes.split(",") if x.strip()]
    for name in names:
        cli.choice(name, tuple(PROBES), "--probes")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        train_probe(name, a.out)
        kept = [str(Path(a.out) / name / f"step-{s:06d}") for s in kept_steps(name)]
        res = judges.main(judges.Args(judges=",".join(kept), split="tune", eval_n=64,
                                      out=str(Path(a.out) / name / "tune")))
        rows += res["judges"]
    text = (f"Judge recipes on tune (48 tune problems x 16 candidates; PRM threshold on 32 other tune problems; "
            f"solving: 64 tune problems). Each probe: train.py {' '.join(COMMON)} plus its flags.\n\n"
            f"{judges.table(rows, 'tune')}\n")
    (Path(a.out) / "tune.md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
