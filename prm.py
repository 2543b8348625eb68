"""The process reward model: a score for every step of an answer, all steps in one forward pass.

    python prm.py --model out/prm --problems P --candidates C --out scores.jsonl
    python prm.py --model out/prm --problems P --candidates C --show steps.png [--id CANDIDATE_ID]

Four heads, each a way to read "is this step right?" off a vision-language model. Every head returns (T, 2)
logits for the T steps of a batch, in reading order; a step's score is softmax(logits)[:, 0].
- likelihood (the default): the steps written as the base writes them ("Step k: ..." lines); a step's score is
  sigmoid(a * mean log-prob of its tokens + b). Before training it is the base's own belief in the step,
  calibrated (train.py fits a and b); fine-tuning moves the likelihoods.
- tag: a tag token after each step; the score is P("+") against P("-") from the LM head at the tag.
- implicit (Yuan et al. 2024): sigmoid(beta * log-likelihood ratio to the start model) of the answer so far, read
  at the tags; it needs no step labels to define, only to train.
- separator (the standard one: token classification, as in TRL's PRM trainer, OpenRLHF and Qwen2.5-Math-PRM): a
  new two-way linear layer on the hidden state at the last token of each step, the steps written as the base
  writes them (no new token to upset it). train.py --probe trains this layer alone on the frozen base.
Causal attention makes one pass over the whole answer equal to scoring each prefix alone (score_prefixes, a test
checks it). How step scores become one answer score (min, mean, last, ...) is bon.py's aggregation.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from common import cli, data
from common.model import (MAX_LEN, encode, hidden_states, load_reward_head, neutralise, token_ids, token_logprobs,
                          train_config, unwrap)
from common.model import load as load_weights
from common.pictures import caption, pick_example, show
from common.tasks import format_steps
from common.tiny import STEP_TAG
from steps import split_steps

# fork here: a new head is a function that returns (T, 2) logits, named in HEADS (train.py --head then trains it)
HEADS = ("likelihood", "tag", "implicit", "separator")
NATIVE_HEADS = ("likelihood", "separator")  # the heads that read the steps as the base writes them (no step tag)
HEAD, BETA = "likelihood", 0.1  # the default head (chosen on the tune split); beta: the implicit head's scale


def load(name_or_path="tiny", device=None, dtype=None, size="small", seed=0):
    """A reward model: the weights (common.model.load), then the head its train_config.json names."""
    model, processor = load_weights(name_or_path, device, dtype, size, seed)
    cfg = train_config(name_or_path)
    if cfg.get("objective") == "sft":  # a base: no reward head, whatever its settings say
        cfg = {}
    if cfg.get("head") == "implicit":
        make_implicit(model, cfg["model"], cfg["beta"], device, dtype, cfg.get("size", "small"), cfg.get("seed", 0))
    if cfg.get("head") == "likelihood":
        model.likelihood = tuple(cfg["calibration"])  # (a, b, cumulative): sigmoid(a * log-likelihood + b)
    if cfg.get("head") == "separator":
        add_separator_head(model, load_reward_head(name_or_path))
    return model, processor


def add_separator_head(model, weights=None, seed=0):
    """Attach the separator head: a (hidden -> 2) linear layer, `weights` (a state dict) or a small seeded start.
    It is a submodule, so training moves it with the model; common.model.save keeps it in its own file."""
    inner = unwrap(model)
    layer = torch.nn.Linear(inner.lm_head.in_features, 2)
    if weights is None:
        torch.nn.init.normal_(layer.weight, std=0.02, generator=torch.Generator().manual_seed(seed))
        torch.nn.init.zeros_(layer.bias)
    else:
        layer.load_state_dict(weights)
    inner.reward_head = layer.to(inner.lm_head.weight.device, inner.lm_head.weight.dtype)


def make_implicit(model, reference, beta, device=None, dtype=None, size="small", seed=0):
    """Turn `model` into an implicit PRM read against `reference` (a frozen copy of the model it starts from)."""
    ref, _ = load_weights(reference, device, dtype, size, seed)
    for p in ref.parameters():
        p.requires_grad_(False)
    model.implicit = (ref, beta)  # a tuple: not a submodule, so neither saved nor trained with the model


def head_of(model):
    """Which head a loaded reward model reads with: likelihood | implicit | tag."""
    inner = unwrap(model)
    if getattr(inner, "implicit", None):
        return "implicit"
    if getattr(inner, "reward_head", None) is not None:
        return "separator"
    if getattr(inner, "likelihood", None) is not None:
        return "likelihood"
    return "tag"


def is_likelihood(model):
    return head_of(model) == "likelihood"


def reads_native(model):
    """Does this PRM read steps as the base writes them ("Step k:" lines, no tags)?"""
    return head_of(model) in NATIVE_HEADS


def encode_steps(processor, images, prompts, steps, native=False, max_len=MAX_LEN, cache=None, keys=None):
    """The reward model's input: chat prompt (image + question), then the answer's steps.

    native=False: every step followed by the step tag (the tag and implicit heads read there).
    native=True: the steps as the base writes them ("Step k: ..." lines, no tag), and batch["step_of"], (B, S) the
    step number (1..n) of each token, 0 elsewhere: what the likelihood and separator heads read.
    Returns encode()'s (batch or None, kept indices, skipped [(index, reason)])."""
    tok = processor.tokenizer
    clean = [[neutralise(s.replace(STEP_TAG, "")).strip() for s in st] for st in steps]
    if native:
        bodies = [format_steps(st) for st in clean]
    else:
        bodies = ["".join(f"{s}{STEP_TAG}\n" for s in st) for st in clean]

    def n_tokens(text):
        return len(tok.encode(text, add_special_tokens=False))

    def mark_steps(enc, prompt_len, i):
        """step_of: step k's tokens run from the end of the steps before it (and its newline) to its own end."""
        step_of = torch.zeros_like(enc["input_ids"])
        for k in range(len(clean[i])):
            start = n_tokens(format_steps(clean[i][:k]) + ("\n" if k else ""))
            end = n_tokens(format_steps(clean[i][:k + 1]))
            step_of[0, prompt_len + start:prompt_len + end] = k + 1
        if int(step_of.max()) != len(clean[i]) or len(set(step_of[0].tolist()) - {0}) != len(clean[i]):
            return "a step has no tokens of its own"
        enc["step_of"] = step_of
        return enc

    def check_tags(enc, prompt_len, i):
        if int((enc["input_ids"] == tok.convert_tokens_to_ids(STEP_TAG)).sum()) != len(steps[i]):
            return "step tags in the input do not match the number of steps"
        return enc
    return encode(processor, images, prompts, bodies, max_len, cache, keys, mark_steps if native else check_tags)


def step_logits(model, batch, ids):
    """(T, 2) logits of every step of the batch, in reading order, from the model's head."""
    head = head_of(model)
    if head == "implicit":
        return implicit_logits(model, batch, ids)
    if head == "likelihood":
        return likelihood_logits(model, batch)
    if head == "separator":
        return separator_logits(model, batch)
    return tag_logits(model, batch, ids)


def tag_logits(model, batch, ids):
    """The tag head: logits of ("+", "-") at every step tag, only 2 rows of the LM head at T positions."""
    h = hidden_states(model, batch)  # (B, S, H)
    at_tag = batch["input_ids"].to(h.device) == ids["tag"]
    return h[at_tag] @ unwrap(model).lm_head.weight[[ids["pos"], ids["neg"]]].T


def separator_logits(model, batch):
    """The separator head: its linear layer on the hidden state at each step's last token (batch from
    encode_steps(native=True)), in reading order."""
    h = hidden_states(model, batch)  # (B, S, H)
    step_of = batch["step_of"].to(h.device)
    next_step = torch.cat([step_of[:, 1:], torch.zeros_like(step_of[:, :1])], 1)
    at_end = (step_of > 0) & (step_of != next_step)  # a step's last token: the next token is not of that step
    return unwrap(model).reward_head(h[at_end])


def implicit_logits(model, batch, ids):
    """The implicit PRM (Yuan et al. 2024, "Free process rewards without process labels"): the value of the answer
    up to a tag is beta * sum of log pi(token) - log pi_ref(token) over its tokens so far, pi_ref the frozen model it
    started from. It starts at 0 and moves along what the base already predicts: a step the base finds unlikely is
    pushed further down. Returned as (value, 0), so softmax gives sigmoid(value)."""
    ref, beta = unwrap(model).implicit
    lp_ref = batch.get("ref_logprobs")  # train.py caches them per record: they never change
    if lp_ref is None:
        with torch.no_grad():
            lp_ref = token_logprobs(ref, batch, ids)
    device = next(model.parameters()).device
    value = beta * torch.cumsum(token_logprobs(model, batch, ids) - lp_ref.to(device), 1)  # (B, S)
    value = value[batch["input_ids"].to(value.device) == ids["tag"]]  # (T,)
    return torch.stack([value, torch.zeros_like(value)], -1)


def likelihood_logits(model, batch):
    """The likelihood head: a step's score is sigmoid(a * its mean token log-prob + b), the steps written as the base
    writes them (a tag the base never saw would upset its predictions after it). (a, b) are fitted to the train
    labels on the start model (train.calibrate), so before any step of training the PRM ranks answers exactly as
    the base's own step likelihood does. An ORM reads the answer so far instead (cumulative: its last value is the
    whole answer's mean log-prob). Returned as (value, 0), like the implicit head."""
    a, b, *cumulative = unwrap(model).likelihood
    value = a * step_logprobs(model, batch, bool(cumulative and cumulative[0])) + b  # (T,)
    return torch.stack([value, torch.zeros_like(value)], -1)


def step_logprobs(model, batch, cumulative=False):
    """(T,) the mean log-probability of each step's tokens (batch from encode_steps(native=True)), in reading
    order: the base's own belief in a step. One forward pass. cumulative: the mean over the answer so far (every
    token of steps 1..k), so the last step's value is the whole answer's."""
    lm_head = unwrap(model).lm_head
    h = hidden_states(model, batch)[:, :-1]  # (B, S-1, H): position j predicts token j+1
    step_of_next = batch["step_of"].to(h.device)[:, 1:]  # the step of the token each position predicts
    keep = step_of_next > 0
    targets = batch["input_ids"].to(h.device)[:, 1:][keep][:, None]
    logprob = torch.log_softmax(lm_head(h[keep]).float(), -1).gather(1, targets)[:, 0]  # one per answer token
    n_steps = batch["step_of"].to(h.device).max(1).values  # (B,)
    first_step = torch.cumsum(n_steps, 0) - n_steps  # each answer's first row in the (T,) output
    row = first_step[:, None].expand_as(step_of_next)[keep] + step_of_next[keep] - 1
    total = torch.zeros(int(n_steps.sum()), device=h.device).index_add(0, row, logprob)
    count = torch.zeros_like(total).index_add(0, row, torch.ones_like(logprob))
    if cumulative:  # running sums within each answer: a cumsum over all steps minus the answers before
        starts = torch.repeat_interleave(first_step, n_steps)

        def running(v):
            c = torch.cumsum(v, 0)
            return c - torch.cat([v.new_zeros(1), c])[starts]
        total, count = running(total), running(count)
    return total / count


@torch.no_grad()
def per_step(read, processor, images, questions, steps, native, batch_size=16, max_len=MAX_LEN, progress=False):
    """read(batch) -> (T,) one value a step, for every step of every answer, one forward pass an answer. Answers are
    batched only with answers of the same length in tokens: nothing is padded, so an answer's values do not depend
    on what else is in its batch (padding would move them in the last digits and flip near-ties).
    Returns (values: one list an answer, None where skipped; skipped [(index, reason)])."""
    out, skipped = [None] * len(questions), []
    todo = [i for i in range(len(questions)) if steps[i]]
    skipped += [(i, "no steps") for i in range(len(questions)) if not steps[i]]
    slice_size = batch_size * 32  # encoded at once, then grouped by length
    for start in tqdm(range(0, len(todo), slice_size), disable=not progress, desc="scoring"):
        encoded, by_length = {}, {}
        for i in todo[start:start + slice_size]:
            batch, _, skip = encode_steps(processor, [images[i]], [questions[i]], [steps[i]], native, max_len)
            if batch is None:
                skipped.append((i, skip[0][1]))
                continue
            encoded[i] = batch
            by_length.setdefault(batch["input_ids"].shape[1], []).append(i)
        for group in by_length.values():
            for b in range(0, len(group), batch_size):
                members = group[b:b + batch_size]
                batch = {k: torch.cat([encoded[i][k] for i in members]) for k in encoded[members[0]]}
                values = read(batch).tolist()
                k = 0
                for i in members:
                    out[i] = values[k:k + len(steps[i])]
                    k += len(steps[i])
    return out, sorted(skipped)


def score_steps(model, processor, images, questions, steps, batch_size=16, max_len=MAX_LEN, progress=False):
    """P(step is right) for every step of every answer (per_step): (scores, one list an answer, None where skipped;
    skipped [(index, reason)])."""
    ids = token_ids(processor)

    def read(batch):  # (T,) P(right) per step
        return torch.softmax(step_logits(model, batch, ids).float(), -1)[:, 0]
    return per_step(read, processor, images, questions, steps, reads_native(model), batch_size, max_len, progress)


@torch.no_grad()
def score_prefixes(model, processor, image, question, steps, max_len=MAX_LEN):
    """The slow reference: each prefix scored on its own (its last step). Equal to score_steps (a test checks it)."""
    s, _ = score_steps(model, processor, [image] * len(steps), [question] * len(steps),
                       [steps[:k + 1] for k in range(len(steps))], batch_size=1, max_len=max_len)
    return [x[-1] for x in s]


def load_inputs(problems_path, candidates_path, only_id=None):
    """(problems by id, candidates, images by problem id): candidates with no `steps` are split from `text`."""
    probs = {p["id"]: p for p in data.read_jsonl(problems_path, "problem", nonempty=True)}
    cands = data.read_jsonl(candidates_path, "candidate", nonempty=True)
    if only_id:
        cands = [c for c in cands if c["id"] == only_id]
        if not cands:
            raise ValueError(f"no candidate with id {only_id!r} in {candidates_path}")
    missing = sorted({c["problem_id"] for c in cands} - set(probs))
    if missing:
        raise ValueError(f"{candidates_path}: problem ids not in {problems_path}: {missing[:5]}")
    special = [c["id"] for c in cands if any("<|" in s for s in c["steps"])]
    if special:
        print(f"{candidates_path}: {len(special)} candidates have special-token text in a step, neutralised "
              f"('<|' -> '< |'; first: {special[0]})", file=sys.stderr)
    images = {}
    for pid in {c["problem_id"] for c in cands}:
        path = data.resolve_image(problems_path, probs[pid]["image"])
        images[pid] = data.open_image(path, f"{problems_path}: problem {pid}")
    for c in cands:
        if not c.get("steps") and c.get("text"):
            c["steps"] = split_steps(c["text"])
    return probs, cands, images


@dataclass
class Args:
    model: str = field(default="tiny", metadata={"help": "tiny | tiny-init | a checkpoint folder or hub id"})
    problems: str = field(default="", metadata={"help": "problems JSONL"})
    candidates: str = field(default="", metadata={"help": "candidates JSONL"})
    out: str = field(default="", metadata={"help": "write score records here (JSONL)"})
    show: str = field(default="", metadata={"help": "write a PNG of one candidate instead: its step scores beside "
                      "the oracle's step labels (the candidate's first_error)"})
    id: str = field(default="", metadata={"help": "candidate id for --show (default: one that teaches, the first "
                    "found of: lucky (right final answer after a wrong step) with its first wrong step mid-way; a "
                    "mid-way wrong step; lucky; any wrong step; else the first candidate)"})
    batch_size: int = field(default=16, metadata={"range": (1, None), "help": "answers per forward pass"})
    max_len: int = field(default=MAX_LEN, metadata={"range": (16, None),
                                                    "help": "maximum tokens per answer (question cut first)"})
    device: str = field(default="", metadata={"type": cli.device,
                                              "help": "cpu | cuda (default: cuda if available)"})


def score_candidates(a, make_scorer, method):
    """The command line of prm.py, orm.py and judge.py: read --problems and --candidates, then (inputs and output
    checked before any model loads) score_fn = make_scorer(), score_fn(images, questions, steps) -> (one score or
    step-score list per candidate, None where skipped; [(index, reason)] skipped); write --out as score records of
    `method`."""
    if not (a.problems and a.candidates and a.out):
        raise ValueError("give --problems, --candidates and --out")
    data.check_out(a.out)
    for given in ("problems", "candidates"):  # the scores would overwrite their own input
        if Path(a.out).resolve() == Path(getattr(a, given)).resolve():
            raise ValueError(f"--out {a.out} is the --{given} file: write the scores to another file")
    probs, cands, images = load_inputs(a.problems, a.candidates)
    score_fn = make_scorer()
    scores, skipped = score_fn([images[c["problem_id"]] for c in cands],
                               [probs[c["problem_id"]]["question"] for c in cands], [c["steps"] for c in cands])
    for i, why in skipped:
        print(f"skipped {cands[i]['id']}: {why}")
    field_name = "scores" if method in ("prm", "judge_prm") else "score"
    recs = [{"candidate_id": c["id"], field_name: s, "model": a.model, "method": method}
            for c, s in zip(cands, scores) if s is not None and (field_name == "score" or None not in s)]
    data.write_jsonl(a.out, recs, "score")
    print(f"wrote {len(recs)} score records to {a.out} ({len(cands) - len(recs)} skipped)")
    return scores


def show_one(a):
    """--show: one candidate's step scores beside the oracle's labels, as a picture."""
    data.check_out(a.show)
    probs, cands, images = load_inputs(a.problems, a.candidates, a.id or None)
    model, processor = load(a.model, device=a.device or None)
    c = pick_example(cands)
    p = probs[c["problem_id"]]
    scores, skipped = score_steps(model, processor, [images[p["id"]]], [p["question"]], [c["steps"]])
    if scores[0] is None:
        raise ValueError(f"candidate {c['id']} could not be scored: {skipped}")
    title = (f"{c['id']}: {caption(c)}\nmodel {a.model} ({head_of(model)} head), problem {p['id']}, "
             f"gold answer {p.get('answer', '?')}")
    show(images[p["id"]], p["question"], c["steps"], scores[0], a.show, title, c.get("first_error"))
    print(f"wrote {a.show}")
    return scores


def main(a: Args):
    if not (a.problems and a.candidates and (a.out or a.show)):
        raise ValueError("give --problems, --candidates and --out (or --show OUT.png)")
    if a.show:
        return show_one(a)

    def make_scorer():
        model, processor = load(a.model, device=a.device or None)

        def score(images, questions, steps):
            return score_steps(model, processor, images, questions, steps, a.batch_size, a.max_len, progress=True)
        return score
    return score_candidates(a, make_scorer, "prm")


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
