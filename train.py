"""One training loop, three objectives: sft (pretrain the tiny base to solve the suite), prm (a soft label for every
step), orm (one for the whole answer). Four reward heads (prm.py): "likelihood" (the default, what bench.py trains:
each step's own log-likelihood, calibrated here before the first step), "tag" (P("+") from the LM head at a step
tag after each step), "implicit" (sigmoid(beta * log-likelihood ratio to the start model of the answer so far)) and
"separator" (a new linear layer at each step's last token; --probe trains it alone on the frozen base).

    python train.py --objective sft --model tiny-init --size deep --data synthetic --out checkpoints/tiny-base
    python train.py --objective prm --model tiny --data out/labels.jsonl --out out/prm
    python train.py --objective prm --head implicit --beta 0.1 ...     # the implicit head
    python train.py --objective prm --head separator --probe ...       # a linear probe of the frozen base
    python train.py --objective prm ... --keep-every 100               # OUT/step-N every 100 steps (learning curves)
    python train.py --objective sft --model tiny --eval-only            # held-out greedy accuracy, JSON last line
    python train.py --objective sft --model tiny --data synthetic-judge --out out/judge   # a judge
    python train.py ... --data synthetic-judge --rating-loss soft --rating-group 4   # other ways to learn to rate
    torchrun --nproc_per_node 2 train.py ...                           # DDP (gloo on CPU, nccl on GPU)

Checkpoints are HF folders (model + processor + train_config.json) that model.load reads; DIR/last holds the
optimizer state too, so --resume continues exactly (same data, same weights as an uninterrupted run).

GPU recipe (a 3B PRM, full fine-tuning at 1024 tokens on one 80 GB GPU; `python -m lab.speed` measures it):
    python train.py --objective prm --model PATH --data L.jsonl --out out/prm3b --lr 1e-5 --batch-size 8 \
        --max-len 1024 --bf16-weights --attn windows --grad-ckpt --ckpt-frac 0.5
common/recipe.py holds it: weights and gradients bf16, fp32 master weights and fp32 AdamW moments (fused); bf16 autocast; the loss needs logits
only at the tags (2 rows of the LM head); the vision tower's windows batched into one SDPA call; vision blocks and
every other language layer checkpointed. The CPU defaults (fp32, no checkpointing) are unchanged.
"""
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import judge
import policy
import prm
from common import checkpoint, cli, data, metrics, recipe, tasks
from common.answers import match_answer, numbers
from common.model import (MAX_LEN, answer_targets, encode, generate, hidden_states, resolve, token_ids,
                          token_logprobs, unwrap)
from common.model import save as save_model
from policy import solve


@dataclass
class Args:
    objective: str = field(default="sft", metadata={"help": "sft | prm | orm", "choices": ["sft", "prm", "orm"]})
    model: str = field(default="tiny-init", metadata={"help": "tiny-init | tiny | a checkpoint folder or hub id"})
    size: str = field(default="small", metadata={"help": "tiny-init size preset: small | deep (the shipped base) | base",
                                                 "choices": ["small", "deep", "base"]})
    data: str = field(default="synthetic", metadata={
        "help": "synthetic (fresh problems every batch) | synthetic-judge (sft: the same, a share of them "
                "rated instead of solved) | synthetic-all (every split's contents: a writer only, never a reward "
                "model's start) | a JSONL file"})
    rating_share: float = field(default=0.5, metadata={
        "range": (0.0, 1.0), "help": "--data synthetic-judge: the share of each batch that is rating "
                                     "examples (judge.rating_examples; the rest: solving)"})
    rating_group: int = field(default=1, metadata={
        "range": (1, None), "help": "--data synthetic-judge: the rated rows come in groups of this many answers "
                                    "to one problem (the group's first row's), so a batch sets answers to the "
                                    "same image and question side by side (1: one answer a problem)"})
    rating_loss: str = field(default="sample", metadata={
        "help": "--data synthetic-judge: how a rating's score digit is learned: sample (the digit drawn from "
                "judge.RATING_NOISE, one token of the batch's token mean) | soft (cross-entropy against the "
                "whole RATING_NOISE row of its verdict, the rated rows' mean added to the other tokens' mean)",
        "choices": ["sample", "soft"]})
    rating_check: str = field(default="none", metadata={
        "help": "--data synthetic-judge: a rating's target first writes a check (\"Check: ...\", judge.check_text), "
                "then gives the score: a checking judge. none | step (the rated step as it should read, or the "
                "whole solution) | numbers (the rated step's numbers against the right step's: \"3 vs 7\") | "
                "agree (the numbers, then whether they agree: \"3 vs 7: they differ\")",
        "choices": ["none", *judge.CHECKS]})
    rating_reference: bool = field(default=False, metadata={
        "help": "--data synthetic-judge: a rating's prompt holds the gold solution as a reference beside the rated "
                "work (judge.REFERENCE_PREFIX): a reference-guided judge, which at work solves first and rates "
                "beside its own solution"})
    rating_noise: str = field(default="judge", metadata={
        "help": "--data synthetic-judge: the scores a rating learns: judge (a general judge's noise, "
                "judge.RATING_NOISE) | exact (the oracle's verdict as 5, 3 or 1: a diagnostic, never a shipped judge)",
        "choices": list(judge.NOISES)})
    eval_data: str = field(default="", metadata={"help": "held-out labelled JSONL for prm/orm (default: 10%% of --data)"})
    out: str = field(default="out/train", metadata={"help": "output folder for checkpoints and log"})
    max_steps: int = field(default=3000, metadata={"range": (1, None), "help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"range": (1, None), "help": "global batch (sequences per optimizer step)"})
    grad_accum: int = field(default=1, metadata={"range": (1, None), "help": "micro-batches per optimizer step"})
    lr: float = field(default=3e-3, metadata={"range": (0.0, None), "help": "peak learning rate (AdamW)"})
    warmup: int = field(default=100, metadata={"range": (0, None), "help": "linear warmup steps, then cosine to 10%% of lr"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    clip: float = field(default=1.0, metadata={"help": "gradient-norm clipping"})
    max_len: int = field(default=MAX_LEN, metadata={"range": (16, None), "help": "maximum sequence length (tokens)"})
    eval_every: int = field(default=500, metadata={"range": (1, None), "help": "evaluate every N steps"})
    eval_n: int = field(default=64, metadata={"range": (1, None), "help": "held-out problems (sft) per evaluation"})
    save_every: int = field(default=500, metadata={"range": (1, None), "help": "checkpoint to OUT/last every N steps"})
    keep_every: int = field(default=0, metadata={"range": (0, None), "help": "also keep the model at step 0 and every N steps in OUT/step-N (learning curves; 0: never)"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and held-out problems"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/last (a run with the same settings only)"})
    overwrite: bool = field(default=False, metadata={"help": "start over in an OUT that holds a checkpoint (removed)"})
    eval_only: bool = field(default=False, metadata={"help": "evaluate --model and exit"})
    grad_ckpt: bool = field(default=False, metadata={"help": "gradient checkpointing (memory for compute)"})
    bf16_weights: bool = field(default=False, metadata={"help": "GPU recipe: bf16 weights, fp32 master copy and AdamW state"})
    ckpt_frac: float = field(default=1.0, metadata={"range": (0.0, 1.0), "help": "with --grad-ckpt: fraction of the language layers checkpointed, spread evenly (vision blocks: all)"})
    ckpt_part: str = field(default="layer", metadata={"help": "with --grad-ckpt: what of a chosen language layer is recomputed: layer | mlp | attn", "choices": ["layer", "mlp", "attn"]})
    attn: str = field(default="", metadata={"help": "attention: sdpa | eager | windows (sdpa, vision windows batched) (default: as loaded)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile every transformer block (GPU; recompiles at eval)"})
    head: str = field(default=prm.HEAD, metadata={"help": "prm/orm: tag (+/- read at each step tag) | implicit (log-likelihood ratio to the start model, read at the tags) | likelihood (each step's own log-likelihood, calibrated: starts as the base's step likelihood)", "choices": list(prm.HEADS)})
    beta: float = field(default=prm.BETA, metadata={"range": (0.0, None), "help": "implicit head: scale of the log-likelihood ratio"})
    probe: bool = field(default=False, metadata={"help": "separator head: train its linear layer alone, the base frozen (a probe)"})
    device: str = field(default="", metadata={"type": cli.device,
                                              "help": "cpu | cuda (default: cuda if available)"})


# What makes the weights: --resume continues only a run made with the same values, and the same --data and
# --eval-data content (their hashes). Not here: how often it saves or evaluates, and how (device, checkpointing).
RUN_KEYS = ("objective", "model", "size", "data", "eval_data", "max_steps", "batch_size", "grad_accum", "lr", "warmup",
            "weight_decay", "clip", "max_len", "seed", "head", "beta", "bf16_weights", "probe",
            "rating_share")
# RUN_KEYS of --data synthetic-judge alone (other runs resume as before)
JUDGE_KEYS = ("rating_loss", "rating_group", "rating_check", "rating_reference", "rating_noise")
SYNTHETIC = ("synthetic", "synthetic-judge", "synthetic-all")  # the --data made in code, fresh every batch (no file)


def run_settings(a):
    """The settings OUT/settings.json holds: RUN_KEYS and the SHA-256 of each data file."""
    files = {f"{k}_sha256": data.file_hash(getattr(a, k)) for k in ("data", "eval_data")
             if getattr(a, k) not in ("", *SYNTHETIC)}
    judging = {k: getattr(a, k) for k in JUDGE_KEYS if a.data == "synthetic-judge"}
    return {**{k: getattr(a, k) for k in RUN_KEYS}, **judging, **files}


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, a.max_steps - a.warmup)
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def synthetic_problems(step, n, seed, contents="train"):
    """The tiny base's pretraining problems at `step`: train contents only (tasks.SPLITS), so nothing it saw is in
    the tune, dev or test split. contents "all" (--data synthetic-all): every split's contents, each problem's split
    drawn in proportion to its share, for a writer that knows more of the world than the base (no reward model or
    judge starts from such a model)."""
    if contents == "train":
        return [tasks.make_problem(f"sft-{step}-{i}", seed, split="train") for i in range(n)]
    rng = random.Random(tasks.seed_of(seed, "contents", step))
    splits = rng.choices(list(tasks.SPLITS), weights=list(tasks.SPLITS.values()), k=n)
    return [tasks.make_problem(f"sft-{step}-{i}", seed, split=split) for i, split in enumerate(splits)]


def synthetic_sft(step, n, seed, eos, contents="train"):
    """The global batch of step `step`: fresh problems that depend only on (seed, step), so a resume sees the same."""
    rng = random.Random(tasks.seed_of(seed, "sft", step))
    probs = synthetic_problems(step, n, seed, contents)
    fmts = [rng.choice(["step", "step", "numbered", "plain"]) for _ in probs]
    texts = [tasks.format_steps([s for s, _, _ in tasks.gold_steps(p)], f) + eos for p, f in zip(probs, fmts)]
    return [tasks.render(p) for p in probs], [p["question"] for p in probs], texts


def synthetic_judge(step, n, seed, eos, rating_share, group=1, check="none", reference=False, noise="judge"):
    """A judge's global batch of step `step`: synthetic_sft's, with a share (rating_share) of its problems
    rated instead of solved: one rating example (judge.rating_examples, PRM or ORM mode) of a solution the
    synthetic sampler wrote to that problem (weak or strong). It keeps its solving skill while it learns to
    rate. group > 1: the rated rows, in order, come in groups of `group` that rate different answers to one
    problem, the group's first row's (its image too). Train contents only, and it depends only on (seed, step),
    so a resume sees the same batches. check: the targets of a checking judge (a judge.CHECKS style); reference:
    the prompts of a reference-guided one; noise: the judge.NOISES table of its scores (judge.rating_examples).
    -> (images, questions, texts, verdicts): verdicts[i] the RATING_NOISE key of a rated row, None for a solving
    row (what --rating-loss soft learns the digit from)."""
    images, questions, texts = synthetic_sft(step, n, seed, eos)
    probs = synthetic_problems(step, n, seed)  # the problems synthetic_sft drew
    rng = random.Random(tasks.seed_of(seed, "judge", step))
    verdicts = [None] * n
    rated = sorted(rng.sample(range(n), round(rating_share * n)))
    for j, i in enumerate(rated):
        head = rated[j - j % group]  # the first row of this row's group: its problem is rated
        prob = probs[head]
        # the (j % group)-th answer of the sampler: another answer for each row of a group
        solution = policy.candidates(prob, j % group + 1, seed, rng.choice(["weak", "strong"]))[-1]
        examples = judge.rating_examples(prob, solution, seed, check, reference, noise)
        k = rng.randrange(len(examples))  # draws as rng.choice(examples) does
        questions[i], target = examples[k]
        verdicts[i] = judge.rated_verdicts(prob, solution, reference)[k][1]
        texts[i] = target + eos
        if i != head:
            images[i] = images[head]
    return images, questions, texts, verdicts


def soft_rating_targets(processor, batch, verdicts, noise="judge"):
    """--rating-loss soft: where each rated row's score digit is and what it learns there. -> {"rating_rows":
    (R,), "rating_pos": (R,) the digit's index in the (B, S-1) frame of next-token targets, "rating_dist":
    (R, 5) its verdict's row of judge.NOISES[noise], "rating_digits": (5,) the token ids of "1".."5"}; verdicts:
    one a batch row (None: a solving row)."""
    tok = processor.tokenizer
    n_prefix = len(tok.encode(judge.SCORE_PREFIX, add_special_tokens=False))
    digits = torch.tensor([tok.encode(str(d), add_special_tokens=False)[-1] for d in range(1, 6)])
    rows = torch.tensor([i for i, v in enumerate(verdicts) if v is not None], dtype=torch.long)
    pos = batch["prompt_lens"][rows] + n_prefix  # the digit's token index in input_ids
    if not torch.isin(batch["input_ids"][rows, pos], digits).all():
        raise ValueError("a rated row has no score digit right after \"Overall Score: \": the tokenizer splits "
                         "the target other than the prefix alone")
    dist = torch.tensor([judge.NOISES[noise][v] for v in verdicts if v is not None], dtype=torch.float32)
    return {"rating_rows": rows, "rating_pos": pos - 1, "rating_dist": dist.reshape(-1, 5),
            "rating_digits": digits}


def load_labelled(path):
    """Step-labelled records -> [(image, prompt, steps, labels, outcome, record id)], images opened."""
    recs = data.read_jsonl(path, "labelled", nonempty=True)  # a bad line: RecordError naming file, line and field
    data.check_images(path, recs)  # a missing image: FileNotFoundError naming file, line, record and path
    empty = [r["id"] for r in recs if not r["completions"]]
    if empty:
        print(f"[train] {path}: skipped {len(empty)} records with no steps (first: {empty[0]})")
    out, opened = [], {}
    for r in recs:
        if not r["completions"]:
            continue
        img = data.resolve_image(path, r["images"][0])
        if img not in opened:
            opened[img] = data.open_image(img, f"{path}: record {r['id']}")
        out.append((opened[img], r["prompt"], r["completions"], r["labels"],
                    float(r.get("meta", {}).get("correct", r["labels"][-1] if r["labels"] else 0.0)), r["id"]))
    return out


def loss_on(model, batch, ids, objective, labels=None):
    """sft: next-token loss on the assistant's tokens. prm: soft cross-entropy at every tag. orm: at the last tag."""
    if objective == "sft":
        hs = hidden_states(model, batch)[:, :-1]  # (B, S-1, H)
        tgt = batch["input_ids"][:, 1:].to(hs.device)
        mask = answer_targets(batch, ids, hs.device)
        head = unwrap(model).lm_head
        if "rating_rows" not in batch:
            return F.cross_entropy(head(hs[mask]).float(), tgt[mask])
        return soft_rating_loss(head, hs, tgt, mask, batch)
    logits = prm.step_logits(model, batch, ids).float()  # (T, 2): "right" and "wrong" for each step
    y = labels.to(logits.device)
    if objective == "orm":
        last = torch.cumsum(batch["n_steps"], 0).to(logits.device) - 1
        logits = logits[last]
    logp = F.log_softmax(logits, -1)
    nll = -(y * logp[:, 0] + (1 - y) * logp[:, 1])  # soft labels stay floats (TRL casts them to int)
    if objective == "prm" and prm.is_likelihood(model):
        # fork here: the loss mask. A step's own likelihood speaks for that step alone, so the steps after the first
        # error (labelled wrong only because an earlier step was) are left out (bench.py --tune-only shows the effect)
        w = after_first_error(y, batch["n_steps"]).logical_not().float()
        return (nll * w).sum() / w.sum()
    return nll.mean()


def soft_rating_loss(head, hs, tgt, mask, batch):
    """--rating-loss soft: the token mean of the next-token loss over every answer token but the rated rows'
    score digits, plus the rated rows' mean cross-entropy of the digit against its verdict's RATING_NOISE row:
    the expectation of the sampled digit's loss (the same noisy judge, no sampling noise), weighted as much as
    all the other tokens together, not as 1 token of several hundred."""
    rows, pos = batch["rating_rows"].to(hs.device), batch["rating_pos"].to(hs.device)
    mask = mask.clone()
    mask[rows, pos] = False
    loss = F.cross_entropy(head(hs[mask]).float(), tgt[mask])
    if len(rows):
        logp = F.log_softmax(head(hs[rows, pos]).float(), -1)[:, batch["rating_digits"].to(hs.device)]  # (R, 5)
        loss = loss - (batch["rating_dist"].to(hs.device) * logp).sum(-1).mean()
    return loss


@torch.no_grad()
def calibrate(model, processor, rows, a, n=512):
    """The likelihood head's (a, b, cumulative): a logistic fit of the labels on the start model's log-likelihoods
    over n train records (a fixed sample), so training starts from the base's own likelihood, calibrated. prm: each
    step's label on that step's likelihood; orm (cumulative): the outcome on the whole answer's."""
    outcome = a.objective == "orm"
    pick = random.Random(tasks.seed_of(a.seed, "calibrate")).sample(range(len(rows)), min(n, len(rows)))
    loglik, y = [], []
    for j in range(0, len(pick), 64):
        chunk = [rows[i] for i in pick[j:j + 64]]
        batch, keep, _ = prm.encode_steps(processor, [r[0] for r in chunk], [r[1] for r in chunk],
                                          [r[2] for r in chunk], native=True, max_len=a.max_len)
        if batch is None:
            continue
        v = prm.step_logprobs(model, batch, cumulative=outcome).float().cpu()  # (T,)
        if outcome:  # the whole answer's: its last step's running mean, against the outcome
            loglik.append(v[torch.cumsum(batch["step_of"].max(1).values, 0) - 1])
            y += [chunk[k][4] for k in keep]
        else:  # each step's, against its label
            loglik.append(v)
            y += [label for k in keep for label in chunk[k][3]]
    x, y = torch.cat(loglik), torch.tensor(y, dtype=torch.float32)
    ab = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        with torch.enable_grad():
            loss = F.binary_cross_entropy_with_logits(ab[0] * x + ab[1], y)
            loss.backward()
        return loss
    opt.step(closure)
    slope, intercept = round(float(ab[0]), 6), round(float(ab[1]), 6)
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"the likelihood head's calibration is not finite (a = {slope}, b = {intercept}) on "
                         f"{len(y)} labels: check the labels")
    if not slope > 0:  # a likelier step should score higher; a slope <= 0 turns the base's belief upside down
        print(f"[train] warning: the likelihood head's calibration slope is {slope} (<= 0) on {len(y)} labels: "
              "the labels rank steps against the base's own likelihood (too few, or flipped?)", file=sys.stderr)
    return slope, intercept, outcome


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
def ref_logprobs(model, batch, ids, keys, cache):
    """The implicit head's reference log-probs for a batch of records `keys`, each computed once and cached."""
    if any(k not in cache for k in keys):
        lp = token_logprobs(model.implicit[0], batch, ids)
        for k, row, n in zip(keys, lp, batch["attention_mask"].sum(1).tolist()):
            cache[k] = row[:n].clone()
    return torch.nn.utils.rnn.pad_sequence([cache[k] for k in keys], batch_first=True,
                                           padding_value=0.0)[:, :batch["input_ids"].shape[1]]


def make_batch(processor, items, a, objective, cache=None, keys=None):
    images, prompts, payload = items[0], items[1], items[2]
    if objective == "sft":
        batch, keep, skipped = encode(processor, images, prompts, payload, a.max_len, cache, keys)
        return batch, None, skipped
    batch, keep, skipped = prm.encode_steps(processor, images, prompts, payload, a.head in prm.NATIVE_HEADS,
                                            a.max_len, cache, keys)
    if batch is None:
        return None, None, skipped
    if objective == "prm":
        y = torch.tensor([v for i in keep for v in items[3][i]], dtype=torch.float32)
    else:
        y = torch.tensor([items[4][i] for i in keep], dtype=torch.float32)
    batch["n_steps"] = torch.tensor([len(payload[i]) for i in keep])
    return batch, y, skipped


@torch.no_grad()
def evaluate_sft(model, processor, a, n=None):
    """Held-out greedy accuracy: each step kind with the gold prefix given (teacher-forced), and the final answer of
    a free greedy solution, per family."""
    model.eval()
    probs = tasks.make_problems(n or a.eval_n, a.seed + 1000, "dev")  # contents the base never saw
    imgs = {p["id"]: tasks.render(p) for p in probs}
    jobs = []  # (problem, step index): continue "Step k:" after the gold steps before it
    for p in probs:
        gold = tasks.gold_steps(p)
        for i in range(len(gold)):
            jobs.append((p, i, (tasks.format_steps([g[0] for g in gold[:i]]) + "\n" if i else "") + f"Step {i + 1}: "))
    hits, tot = {}, {}
    for j in range(0, len(jobs), 64):
        chunk = jobs[j:j + 64]
        outs = generate(model, processor, [imgs[p["id"]] for p, _, _ in chunk], [p["question"] for p, _, _ in chunk],
                          [pre for _, _, pre in chunk], max_new_tokens=24)
        for (p, i, _), o in zip(chunk, outs):
            _, kind, nums = tasks.gold_steps(p)[i]
            ok = sorted(numbers(o.split("\n")[0])) == sorted(float(x) for x in nums)
            hits[kind] = hits.get(kind, 0) + ok
            tot[kind] = tot.get(kind, 0) + 1
    res = {f"step_{k}": round(hits[k] / tot[k], 4) for k in sorted(tot)}
    fam_hits, fam_tot = {}, {}
    for j in range(0, len(probs), 64):
        chunk = probs[j:j + 64]
        outs = solve(model, processor, [imgs[p["id"]] for p in chunk], [p["question"] for p in chunk])
        for p, o in zip(chunk, outs):
            ok = match_answer(o["answer"], p["answer"])
            fam_hits[p["family"]] = fam_hits.get(p["family"], 0) + ok
            fam_tot[p["family"]] = fam_tot.get(p["family"], 0) + 1
    res.update({f"answer_{f}": round(fam_hits[f] / fam_tot[f], 4) for f in sorted(fam_tot)})
    res["answer_all"] = round(sum(fam_hits.values()) / len(probs), 4)
    model.train()
    return res


@torch.no_grad()
def evaluate_rm(model, processor, a, rows):
    """Step accuracy (threshold 0.5), step AUC and first-error F1 of a PRM/ORM against the held-out labels."""
    model.eval()
    images, prompts, steps, step_labels, *_ = zip(*rows) if rows else ([], [], [], [], [])
    scored, _ = prm.score_steps(model, processor, images, prompts, steps, a.batch_size, a.max_len)
    model.train()
    scores = [s for s in scored if s is not None]  # skipped answers (too long) drop out with their labels
    labels = [list(lab) for s, lab in zip(scored, step_labels) if s is not None]
    flat_s = [x for s in scores for x in s]
    flat_y = [y >= 0.5 for lab in labels for y in lab]
    fe_true = [next((i for i, y in enumerate(lab) if y < 0.5), -1) for lab in labels]
    if not flat_s:
        return {"note": "no held-out answer to score"}
    res = {"step_acc": round(sum((s >= 0.5) == y for s, y in zip(flat_s, flat_y)) / len(flat_s), 4)}
    if all(flat_y) or not any(flat_y):  # one class only: AUC and first-error F1 would read 0.5 and 1.0, unmeasured
        return {**res, "note": f"every held-out step is {'right' if all(flat_y) else 'wrong'}: no AUC, no F1"}
    # step accuracy and F1 at the fixed threshold 0.5: a quick look during training (bench chooses it on dev)
    return {**res, "step_auc": round(metrics.auc(flat_s, flat_y), 4),
            "first_error_f1": round(metrics.first_error_f1(scores, fe_true, 0.5)["f1"], 4)}


def head_config(model, a):
    """What a checkpoint's train_config.json needs for model.load to rebuild its head: the likelihood head's
    calibration; the start model as a name that loads from any folder ("tiny", a hub id, or an absolute path)."""
    start = a.model if a.model in ("tiny", "tiny-init") else resolve(a.model)
    return {"model": start, **({"calibration": list(model.likelihood)} if prm.is_likelihood(model) else {})}


def snapshot_folder(out, step):
    return Path(out) / f"step-{step:06d}"


def keep_snapshot(model, processor, a, step):
    """The model at `step` as a folder prm.load reads (weights, head, config): a point of a learning curve."""
    save_model(model, processor, snapshot_folder(a.out, step), {**asdict(a), "steps_done": step,
                                                                 **head_config(model, a)})


def load_model(a, device):
    """The model to train (the newest complete checkpoint when resuming), its processor, and that checkpoint (or
    None); the implicit head's reference attached."""
    last = Path(a.out) / "last"
    ck = checkpoint.latest(last) if a.resume else None
    if a.resume and ck is None and any(last.with_name(n).exists() for n in ("last", "last.prev")):
        raise ValueError(f"{last}: no complete checkpoint to resume from (see above); move it away to start over")
    wdtype = torch.bfloat16 if a.bf16_weights else torch.float32
    model, processor = prm.load(str(ck) if ck else a.model, device=device, dtype=wdtype, size=a.size, seed=a.seed)
    if a.head == "implicit" and a.objective != "sft" and not getattr(model, "implicit", None):
        prm.make_implicit(model, a.model, a.beta, device, wdtype, a.size, a.seed)
    return model, processor, ck


def load_rows(a, processor, rows=None):
    """(train rows, dev rows) from --data (its rows, when main has read them: load_labelled; dev: --eval-data, else a
    stable 10% of the records by index hash)."""
    if a.data in SYNTHETIC:
        return [], []
    rows = rows if rows is not None else load_labelled(a.data)
    if a.eval_data:
        dev_rows = load_labelled(a.eval_data)
    else:
        held = [tasks.seed_of(a.seed, "dev", i) % 10 == 0 for i in range(len(rows))]
        dev_rows = [r for r, d in zip(rows, held) if d]
        rows = [r for r, d in zip(rows, held) if not d]
    if a.objective == "sft":  # any labelled file: its right steps (before the first error) as the target
        eos = processor.tokenizer.eos_token
        rows = [(im, q, tasks.format_steps(st) + eos, lab, o, i) for im, q, st, lab, o, i in rows
                if min(lab) >= 0.5]
    return rows, dev_rows


def micro_batches(step, a, rows, processor, model, ids, rank, world, state):
    """This rank's micro-batches of the global batch of `step` (the same global batch at any world size), as
    [(batch, labels)]. state: the encode and reference caches and the skipped-record count, kept across steps."""
    micro, out = a.batch_size // (world * a.grad_accum), []
    assert micro >= 1, "batch_size must be >= world_size * grad_accum"
    for k in range(a.grad_accum):
        lo, idx = (k * world + rank) * micro, None
        if a.data in SYNTHETIC:
            eos = processor.tokenizer.eos_token
            if a.data == "synthetic-judge":
                whole = synthetic_judge(step, a.batch_size, a.seed, eos, a.rating_share, a.rating_group,
                                        a.rating_check, a.rating_reference, a.rating_noise)
            else:
                whole = synthetic_sft(step, a.batch_size, a.seed, eos, "all" if a.data == "synthetic-all" else "train")
            items = [x[lo:lo + micro] for x in whole]  # synthetic-judge: a 4th list, the verdicts
        else:
            epoch = step * a.batch_size // len(rows)
            order = random.Random(tasks.seed_of(a.seed, "epoch", epoch)).sample(range(len(rows)), len(rows))
            idx = [order[(step * a.batch_size + lo + i) % len(rows)] for i in range(micro)]
            items = list(zip(*[rows[i] for i in idx]))
        batch, y, skipped = make_batch(processor, items, a, a.objective, state["enc"] if idx else None, idx)
        if idx:  # a fixed file: name and count each skipped record once, whatever the epochs
            for i, why in skipped:
                if idx[i] not in state["skipped_ids"] and rank == 0:
                    tqdm.write(f"[train] skipped {rows[idx[i]][5]}: {why}")
            state["skipped_ids"].update(idx[i] for i, _ in skipped)
            state["skipped"] = len(state["skipped_ids"])
        else:
            state["skipped"] += len(skipped)
        if batch is None:
            continue
        if a.data == "synthetic-judge" and a.rating_loss == "soft":
            skip = {j for j, _ in skipped}
            verdicts = [v for j, v in enumerate(items[3]) if j not in skip]
            batch.update(soft_rating_targets(processor, batch, verdicts, a.rating_noise))
        if getattr(model, "implicit", None) and idx:
            skip = {j for j, _ in skipped}
            batch["ref_logprobs"] = ref_logprobs(model, batch, ids, [i for j, i in enumerate(idx) if j not in skip],
                                                 state["ref"])
        out.append((batch, y))
    return out


def train_step(model, opt, micro, a, ids, step, loss_fn=None):
    """One optimizer step over the micro-batches (bf16 autocast on CUDA), the global loss under DDP, clipping,
    AdamW. The step speed.py times. -> (loss of the global batch, gradient norm)."""
    # fork here: the training step (loss, schedule, clipping) that every objective and speed.py run through
    device = str(next(model.parameters()).device)
    for g in opt.param_groups:
        g["lr"] = lr_at(step, a)
    tot = 0.0
    for batch, y in micro:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = (loss_fn or loss_on)(model, batch, ids, a.objective, y) / a.grad_accum
        loss.backward()
        tot += loss.item()
    if torch.distributed.is_initialized():  # log the global batch's loss, not this rank's share
        t = torch.tensor([tot], device=device)
        torch.distributed.all_reduce(t)
        tot = t.item() / torch.distributed.get_world_size()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return tot, float(gn)


def evaluate(model, processor, a, dev_rows):
    return evaluate_sft(model, processor, a) if a.objective == "sft" else evaluate_rm(model, processor, a, dev_rows)


def main(a: Args):
    cli.choice(a.head, prm.HEADS, "--head"), cli.choice(a.objective, ("sft", "prm", "orm"), "--objective")
    if a.probe and (a.head != "separator" or a.objective == "sft"):
        raise ValueError("--probe trains the separator head alone: give --head separator and --objective prm or orm")
    if a.data == "synthetic-judge" and a.objective != "sft":
        raise ValueError("--data synthetic-judge is a stream of texts to write (solutions and ratings): give "
                         "--objective sft")
    if not 0.0 <= a.rating_share <= 1.0:  # main() called in-process skips the command line's range check
        raise ValueError(f"--rating-share {a.rating_share}: expected a share from 0 to 1")
    cli.choice(a.rating_loss, ("sample", "soft"), "--rating-loss")
    if a.rating_loss == "soft" and a.data != "synthetic-judge":
        raise ValueError("--rating-loss soft learns the ratings of --data synthetic-judge: give that --data")
    cli.choice(a.rating_check, ("none", *judge.CHECKS), "--rating-check")
    cli.choice(a.rating_noise, tuple(judge.NOISES), "--rating-noise")
    if a.rating_loss == "soft" and a.rating_check != "none":  # soft_rating_targets reads the digit at the reply's start
        raise ValueError("--rating-loss soft reads the score digit at the start of the reply, and --rating-check "
                         "writes a check before it: give one of the two")
    rank, world, device = recipe.setup(a)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    if not a.eval_only:  # before any expensive work: where the model goes, and what it learns from
        data.check_out(a.out, folder=True)
    rows = load_labelled(a.data) if a.data not in SYNTHETIC and not a.eval_only else None
    if a.resume and a.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite starts it over: give one")
    if not a.eval_only and rank == 0:  # before the model loads: OUT's checkpoint, if any, is of this run
        checkpoint.start(a.out, run_settings(a), a.resume, a.overwrite)
    model, processor, resume = load_model(a, device)
    ids, out, last = token_ids(processor), Path(a.out), Path(a.out) / "last"
    if a.eval_only:
        res = evaluate(model, processor, a, load_labelled(a.eval_data or a.data) if a.objective != "sft" else [])
        print(json.dumps(res))
        return res
    rows, dev_rows = load_rows(a, processor, rows)
    if a.head == "likelihood" and a.objective != "sft" and not prm.is_likelihood(model):
        model.likelihood = calibrate(model, processor, rows, a)  # before any step: the base's likelihood, calibrated
        print(f"[train] likelihood head: a = {model.likelihood[0]}, b = {model.likelihood[1]}, "
              f"cumulative = {model.likelihood[2]}")
    if a.head == "separator" and a.objective != "sft" and prm.head_of(model) != "separator":
        prm.add_separator_head(model, seed=a.seed)  # a fresh layer; a resumed one came with its checkpoint
    if a.probe:  # the base's weights stay as they are: only the head learns
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("reward_head."))
    recipe.prepare(model, a)
    opt, start = recipe.make_optimizer(model, a, device), 0
    if resume:
        st = torch.load(resume / checkpoint.STATE, map_location=device, weights_only=False)
        opt.load_state_dict(st["opt"])
        start = st["step"]
    dmodel = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        checkpoint.trim_log(out / "log.jsonl", start)  # the steps after the checkpoint are done again
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    state, t0 = {"enc": {}, "ref": {}, "skipped_ids": set(), "skipped": 0}, time.time()
    if a.keep_every and start == 0 and rank == 0:  # the start of the curve: the head before any step
        keep_snapshot(model, processor, a, 0)
    bar = tqdm(range(start, a.max_steps), initial=start, total=a.max_steps, disable=rank != 0, desc=a.objective)
    for step in bar:
        micro = micro_batches(step, a, rows, processor, model, ids, rank, world, state)
        loss, gn = train_step(dmodel, opt, micro, a, ids, step)
        if not (math.isfinite(loss) and math.isfinite(gn)):  # a model that is NaN is not saved as a success
            raise ValueError(f"step {step + 1}: the loss is {loss} and the gradient norm {gn}, not finite; stopped "
                             f"with nothing saved past the last checkpoint (check --lr {a.lr} and the labels)")
        bar.set_postfix(loss=f"{loss:.4f}")
        if rank != 0:
            continue
        log.write(json.dumps({"step": step + 1, "loss": round(loss, 6), "lr": lr_at(step, a), "grad_norm": gn,
                              "skipped": state["skipped"], "seconds": round(time.time() - t0, 1)}) + "\n")
        log.flush()
        done = step + 1 == a.max_steps
        if (step + 1) % a.eval_every == 0 or done:
            res = evaluate(model, processor, a, dev_rows)
            tqdm.write(f"step {step + 1}: loss {loss:.4f} eval {json.dumps(res)} skipped {state['skipped']} "
                       f"({time.time() - t0:.0f}s)")
            log.write(json.dumps({"step": step + 1, "eval": res}) + "\n")
        if a.keep_every and (step + 1) % a.keep_every == 0:
            keep_snapshot(model, processor, a, step + 1)
        if (step + 1) % a.save_every == 0 or done:
            checkpoint.save(model, processor, opt, last, {**asdict(a), **head_config(model, a)}, step + 1)
    if rank == 0:
        try:
            save_model(model, processor, out, {**asdict(a), "steps_done": a.max_steps, "skipped": state["skipped"],
                                               **head_config(model, a)})
        except OSError as e:  # a full disk: no folder that looks like a model without its weights
            for name in ("config.json", "train_config.json"):
                (out / name).unlink(missing_ok=True)
            raise OSError(f"could not write the trained model to {out} ({e}); its checkpoint {last} is complete: "
                          "make room and run again with --resume") from e
        print(f"saved {out} ({a.max_steps - start} steps in {time.time() - t0:.0f}s, {state['skipped']} sequences "
              "skipped)")
    if world > 1:  # every rank waits for rank 0's evaluation and save: ranks that leave apart can hang at exit
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return model


if __name__ == "__main__":
    cli.run(main, Args, __doc__)
