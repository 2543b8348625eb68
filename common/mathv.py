"""MATH-V testmini (datasets/mathv-testmini, MIT): 304 real visual-math problems with 15 models' real answers,
read as problem and candidate records. The one real-data adapter: bon.py --mathv ranks this pool.

    python -m common.mathv            # how real chain-of-thought answers cut into steps (steps.split_steps)
"""
import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from common import cli
from common.data import read_jsonl, resolve_image, validate
from steps import split_steps

MATHV = Path(__file__).resolve().parents[1] / "datasets" / "mathv-testmini"


def _slug(s):
    return re.sub(r"[^a-z0-9.]+", "-", s.lower()).strip("-")


def load_mathv(root=None):
    """MATH-V testmini -> (problems, candidates). Problem images are absolute paths. One candidate per response
    row, id f"{problem_id}-{model slug}-{k}": k counts a model's response sets, its answer-only set first (k=0),
    then its chain-of-thought set, so ids are stable. Candidates carry "cot" (a chain-of-thought set) and
    "source_file". A response that splits into no step is skipped and counted on stderr (none in the shipped
    data: 304 problems, 4560 candidates)."""
    root = Path(root) if root else MATHV
    problems = [validate({"id": str(p["id"]), "image": str(resolve_image(root / "problems.jsonl", p["image"])),
                          "question": p["question"], "answer": p["answer"], "options": p.get("options") or [],
                          "subject": p.get("subject"), "level": p.get("level")}, "problem", f"{root}/problems.jsonl")
                for p in read_jsonl(root / "problems.jsonl")]
    rows = read_jsonl(root / "responses.jsonl")
    sets = {}  # model -> its source files, answer-only first
    for r in rows:
        sets.setdefault(r["model"], set()).add(r["source_file"])
    k_of = {f: k for files in sets.values() for k, f in enumerate(sorted(files, key=lambda f: ("CoT" in f, f)))}
    candidates, skipped = [], 0
    for lineno, r in enumerate(rows, 1):
        steps = split_steps(r["response"] or "")
        if not steps:
            skipped += 1
            continue
        candidates.append(validate({
            "id": f'{r["id"]}-{_slug(r["model"])}-{k_of[r["source_file"]]}', "problem_id": str(r["id"]),
            "steps": steps, "answer": r["model_answer"], "correct": r["correct"], "policy": r["model"],
            "text": r["response"], "cot": "CoT" in r["source_file"], "source_file": r["source_file"]},
            "candidate", f"{root}/responses.jsonl:{lineno}"))
    if skipped:
        print(f"load_mathv: skipped {skipped} of {len(rows)} responses with no step (empty text)", file=sys.stderr)
    return problems, candidates


def mathv_stats(root=None, examples=3):
    """Print the histogram of steps per chain-of-thought answer and the share of long answers cut in >= 2 steps."""
    _, candidates = load_mathv(root)
    cot = [c for c in candidates if c["cot"]]
    counts = Counter(len(c["steps"]) for c in cot)
    print(f"MATH-V chain-of-thought answers: {len(cot)} (of {len(candidates)} candidates)")
    print("steps  answers")
    for n in range(1, 16):
        c = sum(v for k, v in counts.items() if (k == n if n < 15 else k >= n))
        print(f"{n if n < 15 else '15+':>5}  {c:>7}  {'#' * round(60 * c / len(cot))}")
    long = [c for c in cot if len(c["text"]) > 300]
    share = sum(len(c["steps"]) >= 2 for c in long) / max(len(long), 1)
    print(f"median steps {sorted(len(c['steps']) for c in cot)[len(cot) // 2]}; answers > 300 chars: {len(long)}, "
          f"split into >= 2 steps: {share:.1%}")
    shown = {}  # one long answer from each of the first `examples` policies, for a look at real splits
    for c in long:
        shown.setdefault(c["policy"], c)
    for c in list(shown.values())[:examples]:
        print(f"\n--- {c['id']} ({c['policy']}, {len(c['steps'])} steps)")
        for i, s in enumerate(c["steps"], 1):
            print(f"  [{i}] {s[:160]!r}{'...' if len(s) > 160 else ''}")
    return share


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--root", default=str(MATHV), help="the MATH-V folder (default: the shipped one)")
    ap.add_argument("--examples", type=cli.within(int, 0), default=3,
                    help="long answers shown with their steps (default 3)")
    a = ap.parse_args(argv)
    return mathv_stats(a.root, a.examples)


if __name__ == "__main__":
    cli.run(main)
