"""The outcome reward model: one score for the whole answer, with the same backbone and heads as the PRM.

    python orm.py --model out/orm --problems P --candidates C --out scores.jsonl

An ORM is a PRM trained on the outcome alone (train.py --objective orm): the label of the last step is whether
the final answer is right. So its answer score is its last step's score, read in the same single forward pass
(the likelihood head reads the whole answer's mean log-prob there). Its other steps' scores are still defined:
bench reads them for the ORM's first-error F1.
"""
from dataclasses import dataclass, field

import prm
from common import cli
from common.model import MAX_LEN


def from_steps(step_scores):
    """An ORM's answer scores from its per-step scores (prm.score_steps): the last step's, None if none."""
    return [s[-1] if s else None for s in step_scores]


def score_answers(model, processor, images, questions, steps, batch_size=16, max_len=MAX_LEN, progress=False):
    """P(answer is right) per answer: the score at its last step. Returns (scores, None where skipped; skipped)."""
    s, skipped = prm.score_steps(model, processor, images, questions, steps, batch_size, max_len, progress)
    return from_steps(s), skipped


@dataclass
class Args:
    model: str = field(default="tiny", metadata={"help": "an ORM checkpoint folder, tiny, or a hub id"})
    problems: str = field(default="", metadata={"help": "problems JSONL"})
    candidates: str = field(default="", metadata={"help": "candidates JSONL"})
    out: str = field(default="", metadata={"help": "write score records here (JSONL)"})
    batch_size: int = field(default=16, metadata={"range": (1, None), "help": "answers per forward pass"})
    max_len: int = field(default=MAX_LEN, metadata={"range": (16, None),
                                                    "help": "maximum tokens per answer (question cut first)"})
    device: str = field(default="", metadata={"type": cli.device,
                                              "help": "cpu | cuda (default: cuda if available)"})


def main(a: Args):
    if not (a.problems and a.candidates and a.out):
        raise ValueError("give --problems, --candidates and --out")

    def make_scorer():
        model, processor = prm.load(a.model, device=a.device or None)

        def score(images, questions, steps):
            return score_answers(model, processor, images, questions, steps, a.batch_size, a.max_len, progress=True)
        return score
    return prm.score_candidates(a, make_scorer, "orm")


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
