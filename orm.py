"""Outcome reward model: one score for the whole answer, with the same backbone and tag convention as the PRM.

    python orm.py --model out/orm --problems P --candidates C --out scores.jsonl
    python orm.py --model tiny --problems P --candidates C --out scores.jsonl --judge logits   # VLM-as-judge ORM

An ORM is a PRM trained on the last tag only (train.py --objective orm): its score is P("+") at the last tag,
read in the same single forward pass. The judge ORM rates the whole answer 1-5 with the paper's rubric.
"""
from dataclasses import dataclass, field

import api
import cli
import data
import judge
import prm
from model import MAX_LEN, load


def from_steps(step_scores):
    """An ORM's answer scores from its per-tag scores (prm.score_steps): the score at the last tag, None if none."""
    return [s[-1] if s else None for s in step_scores]


def score_answers(model, processor, images, questions, steps, batch_size=16, max_len=MAX_LEN, progress=False):
    """P(answer is right) per answer: the score at its last tag. Returns (scores, None where skipped; skipped)."""
    s, skipped = prm.score_steps(model, processor, images, questions, steps, batch_size, max_len, progress)
    return from_steps(s), skipped


@dataclass
class Args:
    model: str = field(default="tiny", metadata={"help": "an ORM checkpoint folder, tiny, or a hub id"})
    problems: str = field(default="", metadata={"help": "problems JSONL"})
    candidates: str = field(default="", metadata={"help": "candidates JSONL"})
    out: str = field(default="", metadata={"help": "write score records here (JSONL)"})
    judge: str = field(default="", metadata={"help": "VLM-as-judge instead of the trained head: logits | generate",
                                             "choices": ["", "logits", "generate"]})
    batch_size: int = field(default=16, metadata={"help": "answers per forward pass"})
    max_len: int = field(default=MAX_LEN, metadata={"help": "maximum tokens per answer (question cut first)"})
    device: str = field(default="", metadata={"help": "cpu | cuda (default: cuda if available)"})


def main(a: Args):
    if not (a.problems and a.candidates and a.out):
        raise ValueError("give --problems, --candidates and --out")
    data.check_out(a.out)
    probs, cands, images = prm.load_inputs(a.problems, a.candidates)
    empty = [c["id"] for c in cands if not c["steps"]]
    cands = [c for c in cands if c["steps"]]
    if api.is_url(a.model) and not a.judge:
        raise ValueError(f"--model {a.model}: a served model can only judge (--judge logits | generate)")
    model, processor = (api.Client(a.model), None) if api.is_url(a.model) else load(a.model, device=a.device or None)
    ims = [images[c["problem_id"]] for c in cands]
    qs = [probs[c["problem_id"]]["question"] for c in cands]
    st = [c["steps"] for c in cands]
    if a.judge:
        scores, fails = judge.judge_answers(model, processor, ims, qs, st, a.judge, a.batch_size)
        print(f"judge ({a.judge}): {fails} parse failures out of {len(cands)} answers")
    else:
        scores, skipped = score_answers(model, processor, ims, qs, st, a.batch_size, a.max_len, progress=True)
        for i, why in skipped:
            print(f"skipped {cands[i]['id']}: {why}")
    for cid in empty:
        print(f"skipped {cid}: no steps")
    recs = [{"candidate_id": c["id"], "score": s, "model": a.model, "method": "judge_orm" if a.judge else "orm"}
            for c, s in zip(cands, scores) if s is not None]
    data.write_jsonl(a.out, recs, "score")
    print(f"wrote {len(recs)} score records to {a.out} ({len(cands) + len(empty) - len(recs)} skipped)")
    return scores


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
