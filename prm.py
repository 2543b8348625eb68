"""The process reward model: its two heads, read at the step tags, single-pass scoring of every step, a picture.

    python prm.py --model out/prm --problems P --candidates C --out scores.jsonl
    python prm.py --model out/prm --problems P --candidates C --show steps.png [--id CANDIDATE_ID]
    python prm.py --model tiny --problems P --candidates C --out judge.jsonl --judge logits   # VLM-as-judge PRM

The step-tag convention (model.py): each step is followed by one tag token; a step's score is P("+") against "-"
at its tag. One forward pass scores all steps of an answer (causal attention: the same as scoring each prefix).
Two heads: "tag", P("+") from the LM head at each tag; "implicit" (Yuan et al. 2024), sigmoid(beta * log-likelihood
ratio to the start model) of the answer so far. train.py trains both; the answer score (aggregation) is bon.py's.
"""
import os
import random
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import api
import cli
import data
import judge
from model import MAX_LEN, encode, hidden_states, load, step_logprobs, token_ids, token_logprobs, unwrap
from steps import split_steps
from tasks import seed_of

# The default head (train.py and bench.py), chosen on the tune split (README, "Choices"); beta: the implicit head's
HEAD, BETA = "likelihood", 0.1
HEADS = ("implicit", "tag", "likelihood")


def is_likelihood(model):
    """Does this PRM read steps as the base writes them (the likelihood head, no tags)?"""
    return getattr(unwrap(model), "likelihood", None) is not None



def tag_logits(model, batch, ids):
    """(T, 2) logits of ("+", "-") at every step tag, in reading order: only 2 rows of the LM head at T positions.
    An implicit PRM (see implicit_logits) is read at the same tags."""
    inner = unwrap(model)
    if getattr(inner, "implicit", None):
        return implicit_logits(model, batch, ids)
    if is_likelihood(model):
        return likelihood_logits(model, batch)
    h = hidden_states(model, batch)
    mask = batch["input_ids"].to(h.device) == ids["tag"]
    # fork here: another head read at the tags (it must return (T, 2) logits: score = softmax(.)[:, 0])
    return h[mask] @ inner.lm_head.weight[[ids["pos"], ids["neg"]]].T


def implicit_logits(model, batch, ids):
    """The implicit PRM (Yuan et al. 2024, "Free process rewards without process labels"): the value of the answer
    up to a tag is beta * sum of log pi(token) - log pi_ref(token) over its tokens so far, pi_ref the frozen model it
    started from. It starts at 0 and moves along what the base already predicts: a step the base finds unlikely is
    pushed further down. Returned as (T, 2) logits (value, 0), so softmax gives sigmoid(value) like the tag head."""
    ref, beta = unwrap(model).implicit
    lp_ref = batch.get("ref_logprobs")  # train.py caches them per record: they never change
    if lp_ref is None:
        with torch.no_grad():
            lp_ref = token_logprobs(ref, batch, ids)
    q = beta * torch.cumsum(token_logprobs(model, batch, ids) - lp_ref.to(next(model.parameters()).device), 1)
    q = q[batch["input_ids"].to(q.device) == ids["tag"]]
    return torch.stack([q, torch.zeros_like(q)], -1)


def likelihood_logits(model, batch):
    """The likelihood head: a step's score is sigmoid(a * its mean token log-prob + b), the steps written as the base
    writes them ("Step k: ..." lines, no tag: a tag the base never saw upsets its predictions after it). (a, b) are
    fitted to the train labels on the start model (train.calibrate), so before any step of training the PRM ranks
    answers exactly as the base's own step likelihood does (controls.step_likelihood); fine-tuning moves the
    likelihoods. An ORM reads the answer so far instead (cumulative: its last value is the whole answer's mean
    log-prob, not the last step's). Returned as (T, 2) logits (value, 0), like the other heads."""
    a, b, *cumulative = unwrap(model).likelihood
    v = a * step_logprobs(model, batch, bool(cumulative and cumulative[0])) + b
    return torch.stack([v, torch.zeros_like(v)], -1)


@torch.no_grad()
def calibrate(model, processor, rows, a, n=512):
    """The likelihood head's (a, b, cumulative): a logistic fit of the labels on the start model's log-likelihoods
    over n train records (a fixed sample), so training starts from the base's own likelihood, calibrated. prm: each
    step's label on that step's likelihood; orm (cumulative): the outcome on the whole answer's."""
    orm_ = a.objective == "orm"
    pick = random.Random(seed_of(a.seed, "calibrate")).sample(range(len(rows)), min(n, len(rows)))
    ll, y = [], []
    for j in range(0, len(pick), 64):
        chunk = [rows[i] for i in pick[j:j + 64]]
        batch, keep, _ = encode(processor, [r[0] for r in chunk], [r[1] for r in chunk],
                                  steps=[r[2] for r in chunk], max_len=a.max_len, native=True)
        if batch is None:
            continue
        v = step_logprobs(model, batch, cumulative=orm_).float().cpu()
        ll.append(v[torch.cumsum(batch["step_of"].max(1).values, 0) - 1] if orm_ else v)
        y += [chunk[k][4] for k in keep] if orm_ else [v for k in keep for v in chunk[k][3]]
    x, y = torch.cat(ll), torch.tensor(y, dtype=torch.float32)
    ab = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        with torch.enable_grad():
            loss = F.binary_cross_entropy_with_logits(ab[0] * x + ab[1], y)
            loss.backward()
        return loss
    opt.step(closure)
    return round(float(ab[0]), 6), round(float(ab[1]), 6), orm_


def after_first_error(y, n_steps):
    """(T,) True at the steps after each record's first wrong step (label < 0.5); y holds the records' labels in
    reading order, n_steps how many each has."""
    out, k = torch.zeros_like(y, dtype=torch.bool), 0
    for n in n_steps.tolist():
        bad = (y[k:k + n] < 0.5).nonzero()
        if len(bad):
            out[k + int(bad[0]) + 1:k + n] = True
        k += n
    return out


@torch.no_grad()
def score_steps(model, processor, images, questions, steps, batch_size=16, max_len=MAX_LEN, progress=False):
    """P(step is right) for every step of every answer, ONE forward pass per answer (batched, padded).
    Returns (scores: list of per-step lists, None for a skipped answer; skipped [(index, reason)])."""
    ids, out, skipped = token_ids(processor), [None] * len(questions), []
    for j in tqdm(range(0, len(questions), batch_size), disable=not progress, desc="scoring"):
        sl = slice(j, j + batch_size)
        todo = [i for i in range(j, min(j + batch_size, len(questions))) if steps[i]]
        skipped += [(i, "no steps") for i in range(sl.start, min(sl.stop, len(questions))) if not steps[i]]
        if not todo:
            continue
        batch, keep, skip = encode(processor, [images[i] for i in todo], [questions[i] for i in todo],
                                   steps=[steps[i] for i in todo], max_len=max_len, native=is_likelihood(model))
        skipped += [(todo[k], why) for k, why in skip]
        if batch is None:
            continue
        p = torch.softmax(tag_logits(model, batch, ids).float(), -1)[:, 0].tolist()  # (T,) P("+") per tag
        k = 0
        for i in (todo[x] for x in keep):
            out[i] = p[k:k + len(steps[i])]
            k += len(steps[i])
    return out, skipped


@torch.no_grad()
def score_prefixes(model, processor, image, question, steps, max_len=MAX_LEN):
    """The slow reference: each prefix scored on its own (its last tag). Equal to score_steps (a test checks it)."""
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
        if not os.path.exists(path):
            raise FileNotFoundError(f"{problems_path}: problem {pid}: image not found: {path}")
        images[pid] = Image.open(path).convert("RGB")
    for c in cands:
        if not c.get("steps") and c.get("text"):
            c["steps"] = split_steps(c["text"])
    return probs, cands, images


def caption(cand):
    """The picture's headline: is the final answer right, and where is the oracle's first wrong step."""
    ok, fe = cand.get("correct"), cand.get("first_error")
    ans = {True: "final answer right", False: "final answer wrong"}.get(ok, "final answer not checked")
    if fe is None:
        return f"{ans}; no oracle labels"
    if fe == -1:
        return f"{ans}, every step right" if ok is not False else f"{ans}, though the oracle finds no wrong step"
    return f"{ans}, but step {fe + 1} wrong (lucky)" if ok else f"{ans}: step {fe + 1} is the first wrong step"


def pick_example(cands):
    """--show's default candidate, one that teaches: the first lucky one (a right final answer after a wrong step)
    whose first wrong step is mid-way (neither the first nor the last step), else the first with a mid-way wrong
    step, else the first lucky one, else the first with any wrong step, else the first."""
    fe = lambda c: -1 if c.get("first_error") is None else c["first_error"]  # noqa: E731
    mid, lucky = lambda c: 0 < fe(c) < len(c["steps"]) - 1, lambda c: c.get("correct") and fe(c) >= 0  # noqa: E731
    tests = (lambda c: lucky(c) and mid(c), mid, lucky, lambda c: fe(c) >= 0)
    return next((c for t in tests for c in cands if t(c)), cands[0])


def score_colour(s):
    """Red (0) through olive to green (1): the colour of a step score."""
    return int(255 * (1 - s)), int(200 * s), 60


def wrap(text, font, width):
    """Greedy word wrap to `width` pixels of `font`."""
    lines = [""]
    for w in text.split():
        t = f"{lines[-1]} {w}".strip()
        if font.getlength(t) <= width or not lines[-1]:
            lines[-1] = t
        else:
            lines.append(w)
    return lines


def show(image, question, steps, scores, out, title="", first_error=None, what="PRM score, P(step right)"):
    """A picture of one scored answer: the image, the question, a colour scale, and each step with its score beside
    the oracle's label (first_error: the oracle's first wrong step, -1 none, None: no oracle labels). Returns the
    rows drawn: [{"step", "text", "score", "oracle"}]."""
    (font, small, big), W = (ImageFont.load_default(size=s) for s in (15, 13, 17)), 900
    x_text, lh = 240, 20
    rows = [{"step": k + 1, "text": s, "score": sc, "oracle": "no oracle labels" if first_error is None else
             "1 right" if first_error == -1 or k < first_error else "0 first wrong" if k == first_error else
             "0 after the first"} for k, (s, sc) in enumerate(zip(steps, scores))]
    wrapped = [wrap(f"{r['step']}. {r['text']}", font, W - x_text - 30) for r in rows]
    head = [(t, i == 0) for i, line in enumerate(title.split("\n"))  # the first line large
            for t in wrap(line, big if i == 0 else small, W - 275)]
    qlines = wrap(question, font, W - 275)
    top = max(260, 10 + 24 * len(head) + lh * len(qlines) + 80)
    img = Image.new("RGB", (W, top + 30 + sum(lh * len(w) + 10 for w in wrapped) + 10), "white")
    d = ImageDraw.Draw(img)
    img.paste(image.resize((240, 240), Image.NEAREST), (10, 10))
    d.rectangle((9, 9, 250, 250), outline=(150, 150, 150))
    y = 10
    for t, first in head:
        d.text((265, y), t, fill="black" if first else "gray", font=big if first else small)
        y += 24
    for q in qlines:
        d.text((265, y), q, fill="black", font=font)
        y += lh
    y += 12  # the colour scale: what a score's colour means
    d.text((265, y), f"{what}: colour scale", fill="gray", font=small)
    for x in range(300):
        d.line((265 + x, y + 20, 265 + x, y + 34), fill=score_colour(x / 299))
    for v in (0, 0.5, 1):
        d.text((265 + 292 * v, y + 36), f"{v:g}", fill="gray", font=small)  # under its place on the bar
    d.text((580, y + 18), "oracle: 1 right, 0 wrong\n(steps after the first\nwrong one count as wrong)",
           fill="gray", font=small)
    y = top
    for x, t in ((10, what.split()[0]), (90, "oracle"), (x_text, "step")):
        d.text((x, y), t, fill="gray", font=small)
    y += 22
    for r, ls in zip(rows, wrapped):
        h, sc = lh * len(ls) + 6, r["score"]
        c = score_colour(sc) if sc is not None else (150, 150, 150)
        d.rectangle((10, y, 80, y + h), fill=tuple(int(v * 0.35 + 255 * 0.65) for v in c), outline=c)
        d.text((18, y + 3), "-" if sc is None else f"{sc:.2f}", fill="black", font=font)
        oc = {"1": (20, 130, 40), "0": (200, 20, 20)}.get(r["oracle"][0], (120, 120, 120))
        d.rectangle((88, y, x_text - 8, y + h), fill=tuple(int(v * 0.25 + 255 * 0.75) for v in oc), outline=oc)
        d.text((94, y + 3), r["oracle"], fill="black", font=small if first_error is None else font)
        for j, line in enumerate(ls):
            d.text((x_text, y + 3 + lh * j), line if j == 0 else "   " + line, fill="black", font=font)
        y += h + 4
    img.save(out)
    return rows


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
    judge: str = field(default="", metadata={"help": "VLM-as-judge instead of the trained PRM head: logits | generate",
                                             "choices": ["", "logits", "generate"]})
    batch_size: int = field(default=16, metadata={"help": "answers per forward pass"})
    max_len: int = field(default=MAX_LEN, metadata={"help": "maximum tokens per answer (question cut first)"})
    device: str = field(default="", metadata={"help": "cpu | cuda (default: cuda if available)"})


def main(a: Args):
    if not (a.problems and a.candidates and (a.out or a.show)):
        raise ValueError("give --problems, --candidates and --out (or --show OUT.png)")
    data.check_out(a.show or a.out)
    probs, cands, images = load_inputs(a.problems, a.candidates, a.id or None)
    if a.show:
        cands = [pick_example(cands)]
    if api.is_url(a.model) and not a.judge:
        raise ValueError(f"--model {a.model}: a served model can only judge (--judge logits | generate)")
    model, processor = (api.Client(a.model), None) if api.is_url(a.model) else load(a.model, device=a.device or None)
    ims = [images[c["problem_id"]] for c in cands]
    qs = [probs[c["problem_id"]]["question"] for c in cands]
    st = [c["steps"] for c in cands]
    if a.judge:
        scores, fails = judge.judge_steps(model, processor, ims, qs, st, a.judge, a.batch_size)
        skipped = [(i, "no steps") for i, s in enumerate(st) if not s]
        print(f"judge ({a.judge}): {fails} parse failures out of {sum(map(len, st))} steps")
    else:
        scores, skipped = score_steps(model, processor, ims, qs, st, a.batch_size, a.max_len, progress=True)
    for i, why in skipped:
        print(f"skipped {cands[i]['id']}: {why}")
    if a.show:
        if scores[0] is None:
            raise ValueError(f"candidate {cands[0]['id']} could not be scored: {skipped}")
        c, implicit = cands[0], getattr(unwrap(model), "implicit", None)
        head = f"judge, {a.judge}" if a.judge else "likelihood head" if is_likelihood(model) else (
            "implicit head" if implicit else "tag head")
        show(ims[0], qs[0], st[0], scores[0], a.show, f"{c['id']}: {caption(c)}\nmodel {a.model} ({head}), problem "
             f"{c['problem_id']}, gold answer {probs[c['problem_id']].get('answer', '?')}", c.get("first_error"),
             "judge score, (rubric - 1) / 4" if a.judge else "PRM score, P(step right)")
        print(f"wrote {a.show}")
        return scores
    recs = [{"candidate_id": c["id"], "scores": s, "model": a.model, "method": "judge_prm" if a.judge else "prm"}
            for c, s in zip(cands, scores) if s is not None and None not in s]
    data.write_jsonl(a.out, recs, "score")
    print(f"wrote {len(recs)} score records to {a.out} ({len(cands) - len(recs)} skipped)")
    return scores


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
