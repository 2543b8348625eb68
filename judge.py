"""VLM-as-a-judge (ViLBench): a model never trained as a reward model rates answers with the paper's 1-5 rubric.

    python judge.py --model tiny --mode prm --problems P --candidates C --out judge_prm.jsonl    # one score a step
    python judge.py --model tiny --mode orm --problems P --candidates C --out judge_orm.jsonl    # one an answer

PRM mode rates each step given the steps before it (one judge call per prefix); ORM mode rates the whole answer.
Two ways to read the rating: "logits", the expected score over the tokens "1".."5" right after "Overall Score:"
(deterministic, never fails to parse), and "generate", the reply written out and its last "Overall Score: N"
parsed. A judge is any object with rate(images, prompts) -> (scores in [0, 1] or None, parse failures): Judge here
for a local model, lab/api.py's ServedJudge for one behind vLLM or SGLang.

The tiny base never learned to judge. rating_examples turns a sampled solution into rubric ratings with a
general judge's noise (RATING_NOISE); train.py --data synthetic-judge trains on them beside solving, which
made the shipped judges checkpoints/tiny-judge-* (python -m lab.judges measures them on dev). rated_verdicts
gives the same prompts with their verdicts, for train.py --rating-loss soft (the score learned against its
verdict's whole RATING_NOISE row). Two ways for a judge to reason before its score: a checking judge writes a
check first (CHECKS: the step worked out, or its numbers against the right ones), and a reference-guided judge
solves the question itself and rates beside its own solution. lab/judge_recipes.py compares such recipes on tune.
"""
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

import policy
import prm
from common import answers, cli, tasks
from common.model import encode, generate, hidden_states, load, resolve, unwrap
from common.tasks import format_steps

# The paper's judge rubric (ViLBench, VLM-as-a-judge): rate 1-5 on relevance, coherence, accuracy and clarity.
# fork here: your own rubric (keep the "Overall Score: N" ending that parse_score reads); python judge.py shows it
RUBRIC = ("You are a careful judge of visual math solutions. Look at the image and the question, then rate the "
          "{what} from 1 (poor) to 5 (excellent) for relevance, coherence, accuracy and clarity. "
          "End your reply with \"Overall Score: N\".\n\nQuestion: {question}\n\nSolution:\n{solution}")
MODES = ("logits", "generate")


def prompt(question, steps, upto=None, reference=None):
    """ORM mode (upto None): judge the whole answer. PRM mode: judge step `upto` given the steps before it.
    reference: a reference-guided judge's own solution (its steps), set between the question and the rated work."""
    if reference is not None:
        # written as the rated work is, so that the two line up
        written = "\n".join(reference) if upto is None else format_steps(reference)
        question = f"{question}{REFERENCE_PREFIX}{written}"
    if upto is None:
        return RUBRIC.format(what="whole solution", question=question, solution="\n".join(steps))
    return RUBRIC.format(what=f"latest step (Step {upto + 1})", question=question,
                         solution=format_steps(steps[:upto + 1]))


# A general judge's ratings: the probability of each score 1..5 given what the oracle knows of the rated
# work. A VLM judge has a judging skill from its general training but is no oracle (ViLBench: its Best-of-N
# gains are small and uneven), so its ratings are drawn with noise: right work scores 4-5 nine times in ten,
# wrong work 1-2 four times in five, and one rating in ten to twenty lands on the far side; a lucky answer
# (right, through a wrong step) sits in between, as its answer is right and its reasoning is not. A judge
# trained on these learns the oracle's ranking, not its certainty.
# fork here: a sharper or noisier judge (python -m lab.judges measures it)
RATING_NOISE = {"right": (0.02, 0.03, 0.07, 0.28, 0.60),   # mean 4.41
                "lucky": (0.10, 0.20, 0.40, 0.20, 0.10),   # mean 3.00
                "wrong": (0.55, 0.27, 0.08, 0.06, 0.04)}   # mean 1.77
# The oracle's verdicts as exact scores (5, 3, 1): a diagnostic judge's targets (train.py --rating-noise exact),
# to tell what the judge cannot learn from what the noise hides from it. NOISES: the tables a judge learns from.
EXACT_RATINGS = {"right": (0.0, 0.0, 0.0, 0.0, 1.0), "lucky": (0.0, 0.0, 1.0, 0.0, 0.0),
                 "wrong": (1.0, 0.0, 0.0, 0.0, 0.0)}
NOISES = {"judge": RATING_NOISE, "exact": EXACT_RATINGS}
SCORE_PREFIX = "Overall Score: "  # what a rating ends with; logits mode reads the digit right after it
# A checking judge writes a check before it rates, as a general VLM judge reasons before its verdict: "Check: ..."
# then the score. A tiny model cannot verify a number against the image or the arithmetic in the one position of
# its score, but it can write out what it compares. CHECKS, what the check holds (train.py --rating-check):
# "step": the rated step as it should read (in ORM mode the whole solution), worked out;
# "numbers": the rated step's numbers against the same step's in the right solution (in ORM mode the last steps'),
# each list sorted as the oracle compares them, "3 vs 7"; beside a reference, a copy from it;
# "agree": the numbers, then whether the two lists agree, "3 vs 7: they differ" (the score after it stays noisy).
CHECKS = ("step", "numbers", "agree")
CHECK_PREFIX = "Check: "
# A reference-guided judge (MT-Bench's reference-guided grading) solves the question itself first, then rates with
# its own solution beside the rated one: it compares where a judge without one would have to verify in one
# position. Trained with the gold solution as the reference; at work its reference is its own greedy solution.
REFERENCE_PREFIX = "\n\nReference solution:\n"


def verdicts(problem, solution):
    """What the oracle knows of a solution, as RATING_NOISE rows: [(k, verdict of step k)] for PRM mode
    (a step after the first error is wrong, as tasks.step_labels has it), then (None, verdict of the whole
    answer) for ORM mode: right (every step right), lucky (the answer right through a wrong step) or wrong."""
    steps = solution["steps"]
    labels = tasks.step_labels(problem, steps)
    out = [(k, "right" if label == 1.0 else "wrong") for k, label in enumerate(labels)]
    if not solution["correct"]:
        whole = "wrong"
    else:
        whole = "right" if tasks.first_error(problem, steps) == -1 else "lucky"
    return out + [(None, whole)]


def rated_verdicts(problem, solution, reference=False):
    """The verdicts a judge is trained to rate for one sampled solution (a policy.candidates record: "steps",
    "correct") of a train problem: [(prompt, verdict, upto)], one PRM-mode prompt a step up to the first wrong
    one (prompt(question, steps, upto=k), upto k), then the ORM-mode one (prompt(question, steps), upto None);
    verdict a RATING_NOISE key."""
    if "facts" not in problem:
        raise ValueError(f"problem {problem.get('id')!r}: rating examples need a suite problem (the oracle "
                         "knows its steps)")
    split = tasks.split_of(problem)
    if split != "train":  # a judge trained on tune/dev/test contents would be measured on what it saw
        raise ValueError(f"problem {problem['id']!r} has {split} contents: a judge's rating examples come "
                         "from train contents only")
    first_error = tasks.first_error(problem, solution["steps"])
    gold = [text for text, _, _ in tasks.gold_steps(problem)] if reference else None
    out = []
    for k, verdict in verdicts(problem, solution):
        if k is not None and first_error != -1 and k > first_error:
            # a step after the first error is labelled wrong only because an earlier one is: rated low, it
            # would teach the judge to fault a step that may be right on its own (train.py's likelihood loss
            # leaves these steps out for the same reason); the first-error F1 reads no step after it either
            continue
        out.append((prompt(problem["question"], solution["steps"], upto=k, reference=gold), verdict, k))
    return out


def numbers_of(text):
    """A step's numbers as a checking judge writes them: the ones the oracle reads (answers.NUM), sorted by value
    (it compares them as a multiset), comma-separated; "none" for a step without one."""
    return ", ".join(sorted(answers.NUM.findall(text), key=float)) or "none"


def check_text(problem, upto, steps, style="step"):
    """What a checking judge writes before its score about step `upto` of `steps` (the whole answer where upto is
    None), a CHECKS style: the step as it should read after a right prefix, or the whole solution worked out
    ("step"); the rated step's numbers against the right step's ("numbers"), and whether they agree ("agree")."""
    gold = [text for text, _, _ in tasks.gold_steps(problem)]
    if style in ("numbers", "agree"):
        if upto is None:  # ORM mode: the last steps, where the answers are
            rated, right = numbers_of(steps[-1]), numbers_of(gold[-1])
        else:
            rated, right = numbers_of(steps[upto]), numbers_of(gold[upto] if upto < len(gold) else "")
        if style == "agree":
            return f"{rated} vs {right}: they {'agree' if rated == right else 'differ'}"
        return f"{rated} vs {right}"
    if upto is None:
        return " ".join(gold)
    return gold[upto] if upto < len(gold) else "There is no such step."


def rating_examples(problem, solution, seed=0, check="none", reference=False, noise="judge"):
    """A judge's training examples for one sampled solution of a train problem: [(prompt, target)], the prompts
    of rated_verdicts, each target "Overall Score: N", N drawn from its verdict's row of NOISES[noise]; with check
    (a CHECKS style, not "none"), "Check: <check_text>" on the line before it. Deterministic in (seed, problem id,
    steps)."""
    cli.choice(check, ("none", *CHECKS), "check")
    table = NOISES[cli.choice(noise, tuple(NOISES), "noise")]
    rated = rated_verdicts(problem, solution, reference)
    rng = random.Random(tasks.seed_of(seed, "rate", problem["id"], *solution["steps"]))
    out = []
    for p, v, upto in rated:
        score = f"{SCORE_PREFIX}{rng.choices(range(1, 6), weights=table[v])[0]}"
        if check != "none":
            score = f"{CHECK_PREFIX}{check_text(problem, upto, solution['steps'], check)}\n{score}"
        out.append((p, score))
    return out


def parse_score(reply):
    """A judge's reply -> its last "Overall Score: N" (1-5) as (N - 1) / 4, or None when it has none."""
    m = re.findall(r"Overall Score:\s*\**\s*([1-5])\b", reply)
    return (int(m[-1]) - 1) / 4 if m else None


class Judge:
    """A local model as a judge: rate(images, prompts) -> (scores in [0, 1], parse failures). check: a checking
    judge (train.py --rating-check), which logits mode lets write its check before the score is read."""

    def __init__(self, model, processor, mode="logits", batch_size=8, max_new_tokens=256, check=False,
                 reference=False):
        cli.choice(mode, MODES, "judge mode")
        self.model, self.processor, self.mode, self.check = model, processor, mode, check
        self.reference, self.solved = reference, {}  # solved: its own solution of each (question, image) seen
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    @torch.no_grad()
    def rate(self, images, prompts):
        """(E - 1) / 4 of a 1-5 score: logits mode reads the expectation, generate mode the parsed reply (a reply
        without a score is a parse failure: None, counted)."""
        if self.mode == "logits":
            replies = self.checks(images, prompts) if self.check else None  # a checking judge writes first
            p = self.score_probs(images, prompts, replies)  # (N, 5)
            return (((p * torch.arange(1, 6)).sum(-1) - 1) / 4).tolist(), 0
        scores, failures = [], 0
        for j in range(0, len(prompts), self.batch_size):
            ims, ps = images[j:j + self.batch_size], prompts[j:j + self.batch_size]
            for text in generate(self.model, self.processor, ims, ps, max_new_tokens=self.max_new_tokens):
                scores.append(parse_score(text))
                failures += scores[-1] is None
        return scores, failures

    @torch.no_grad()
    def solutions(self, images, questions):
        """A reference-guided judge's own solutions (greedy, its solving skill): one list of steps a question,
        each (question, image) solved once however many answers to it are rated."""
        keys = [(q, hashlib.sha256(im.tobytes()).hexdigest()) for im, q in zip(images, questions)]
        todo = {k: i for i, k in enumerate(keys) if k not in self.solved}  # one row of each new problem
        rows = list(todo.values())
        for j in range(0, len(rows), self.batch_size):
            part = rows[j:j + self.batch_size]
            part_images, part_questions = [images[i] for i in part], [questions[i] for i in part]
            got = policy.solve(self.model, self.processor, part_images, part_questions)
            self.solved.update({keys[i]: o["steps"] for i, o in zip(part, got)})
        return [self.solved[k] for k in keys]

    @torch.no_grad()
    def checks(self, images, prompts):
        """A checking judge's replies up to its score (greedy): "Check: ...\n" of each prompt, the text before
        "Overall Score: " (its whole reply where it wrote none)."""
        out = []
        for j in range(0, len(prompts), self.batch_size):
            ims, ps = images[j:j + self.batch_size], prompts[j:j + self.batch_size]
            for text in generate(self.model, self.processor, ims, ps, max_new_tokens=self.max_new_tokens,
                                 stop=[SCORE_PREFIX]):
                out.append(text.split(SCORE_PREFIX)[0])
        return out

    @torch.no_grad()
    def score_probs(self, images, prompts, replies=None):
        """(N, 5) the model's distribution over the scores 1..5 as the next token after "Overall Score: " (the
        logits of the other tokens left out), written after each reply (a checking judge's check; none: at the
        reply's start): what logits mode reads."""
        tok = self.processor.tokenizer
        digits = [tok.encode(str(d), add_special_tokens=False)[-1] for d in range(1, 6)]
        bodies = [SCORE_PREFIX] * len(prompts) if replies is None else [r + SCORE_PREFIX for r in replies]
        out = []
        for j in range(0, len(prompts), self.batch_size):
            ims, ps = images[j:j + self.batch_size], prompts[j:j + self.batch_size]
            batch, _, _ = encode(self.processor, ims, ps, bodies[j:j + self.batch_size], max_len=10**6)
            hs = hidden_states(self.model, batch)  # (B, S, H): read after the last real token of each row
            last = batch["attention_mask"].sum(1).to(hs.device) - 1
            w = unwrap(self.model).lm_head.weight[digits]  # (5, H)
            out.append(torch.softmax((hs[torch.arange(len(ps)), last] @ w.T).float(), -1).cpu())  # (B, 5)
        return torch.cat(out) if out else torch.zeros(0, 5)


def trained_as(name, setting):
    """A judge checkpoint's train.py setting (a shipped short name or a folder; its train_config.json), None where
    it has none: "rating_check", what it writes before it rates (a CHECKS style or "none"), or
    "rating_reference", whether it rates beside a reference."""
    config = Path(resolve(name)) / "train_config.json"
    return json.loads(config.read_text()).get(setting) if config.exists() else None


def load_judge(name, mode="logits", batch_size=8, device=None):
    """A local judge by name, told how it was trained to rate (trained_as)."""
    check = trained_as(name, "rating_check") in CHECKS
    return Judge(*load(name, device=device), mode, batch_size, check=check,
                 reference=bool(trained_as(name, "rating_reference")))


def references(judge, images, questions):
    """One reference a question where the judge is reference-guided (its own solution), else None each."""
    if getattr(judge, "reference", False):
        return judge.solutions(images, questions)
    return [None] * len(questions)


def judge_steps(judge, images, questions, steps):
    """The paper's judge PRM: one judge call per step prefix. Returns per-step score lists and parse failures."""
    flat_images, flat_prompts, owner = [], [], []
    refs = references(judge, images, questions)
    for i, st in enumerate(steps):
        for k in range(len(st)):
            flat_images.append(images[i])
            flat_prompts.append(prompt(questions[i], st, upto=k, reference=refs[i]))
            owner.append(i)
    scores, failures = judge.rate(flat_images, flat_prompts)
    out = [[] for _ in steps]
    for i, x in zip(owner, scores):
        out[i].append(x)
    return out, failures


def judge_answers(judge, images, questions, steps):
    """The paper's judge ORM: one rubric prompt per whole answer; scores in [0, 1] and the parse failures."""
    refs = references(judge, images, questions)
    return judge.rate(images, [prompt(q, st, reference=r) for q, st, r in zip(questions, steps, refs)])


@dataclass
class Args:
    model: str = field(default="tiny", metadata={"help": "the judge: tiny | a checkpoint folder or hub id"})
    mode: str = field(default="prm", metadata={"help": "prm: a score for every step | orm: one for the answer",
                                               "choices": ["prm", "orm"]})
    read: str = field(default="logits", metadata={"help": "how the rating is read: logits | generate",
                                                  "choices": list(MODES)})
    problems: str = field(default="", metadata={"help": "problems JSONL"})
    candidates: str = field(default="", metadata={"help": "candidates JSONL"})
    out: str = field(default="", metadata={"help": "write score records here (JSONL)"})
    batch_size: int = field(default=8, metadata={"range": (1, None),
                                                 "help": "judge prompts per forward pass"})
    device: str = field(default="", metadata={"type": cli.device,
                                              "help": "cpu | cuda (default: cuda if available)"})


def judge_candidates(judge, mode, images, questions, steps):
    """Every candidate judged in `mode` (prm: a score a step; orm: one an answer) -> (scores, None for an answer
    with no step; [(index, "no steps")]); the parse failures are printed."""
    rated = [i for i, st in enumerate(steps) if st]  # an answer with no step has nothing to judge
    args = ([images[i] for i in rated], [questions[i] for i in rated], [steps[i] for i in rated])
    if mode == "prm":
        got, failures = judge_steps(judge, *args)
        print(f"judge: {failures} parse failures out of {sum(len(steps[i]) for i in rated)} steps")
    else:
        got, failures = judge_answers(judge, *args)
        print(f"judge: {failures} parse failures out of {len(rated)} answers")
    scores = [None] * len(steps)
    for i, s in zip(rated, got):
        scores[i] = s
    return scores, [(i, "no steps") for i, st in enumerate(steps) if not st]


def main(a: Args, given=None):
    """given: a judge object (lab/api.py passes a served one); default: --model, loaded once the inputs are read."""
    def make_scorer():
        judge = given or load_judge(a.model, a.read, a.batch_size, a.device or None)

        def score(images, questions, steps):
            return judge_candidates(judge, a.mode, images, questions, steps)
        return score
    return prm.score_candidates(a, make_scorer, f"judge_{a.mode}")


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
