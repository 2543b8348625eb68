"""Controls: what a trained PRM must beat to show that it checks steps rather than guessing.

- prior-only: P(step right | its template and the number it claims), counted on the train labels (no image, no
  reasoning: a prototype's PRM learned exactly this, "7 is never a count");
- the base model's own step likelihood: a zero-shot verifier (is the PRM doing more than the base already knew?);
- the image blanked: a PRM that reads the image must lose its perception skill;
- segmentation: the same answer cut into the writer's steps, fixed-size chunks or coarse pairs (the paper's closing
  finding: PRMs need clear step divisions), and key-step weighting against equal weights.
bench.py uses them in its tables (7) and (8).
"""
import re

import torch
from PIL import Image

import bon
import prm
import tasks


def step_likelihood(model, processor, images, questions, steps, batch_size=32):
    """The base model's own belief in each step: exp(mean log-prob of the step's tokens) given the steps before it.
    A zero-shot verifier: is the PRM doing more than the base already knew?"""
    tok, out = processor.tokenizer, []
    for j in range(0, len(questions), batch_size):
        sl = range(j, min(j + batch_size, len(questions)))
        texts = [tasks.format_steps(steps[i], "step") for i in sl]
        batch, keep, _ = prm.encode(processor, [images[i] for i in sl], [questions[i] for i in sl], answers=texts)
        with torch.no_grad():
            h = prm.hidden_states(model, batch)
            logp = torch.log_softmax(model.lm_head(h[:, :-1]).float(), -1)
            lp = logp.gather(-1, batch["input_ids"][:, 1:, None].to(logp.device))[..., 0]  # (B, S-1)
        for r, i in enumerate(sl[k] for k in keep):
            start, scores = int(batch["prompt_lens"][r]), []
            for k in range(len(steps[i])):  # token span of step k: prefix lengths are stable at the newline
                lo = start + len(tok.encode(tasks.format_steps(steps[i][:k], "step") + ("\n" if k else ""),
                                            add_special_tokens=False))
                hi = start + len(tok.encode(tasks.format_steps(steps[i][:k + 1], "step"), add_special_tokens=False))
                scores.append(float(lp[r, lo - 1:hi - 1].mean().exp()))
            out.append(scores)
    return out


def prior_table(label_recs):
    """The prior-only baseline: P(step right | its template and claimed value) from the train labels alone."""
    stats = {}
    for r in label_recs:
        for s, y in zip(r["completions"], r["labels"]):
            for key in (_template(s), _template(s) + "|" + str(tasks.numbers(s)[-1:])):
                n, t = stats.get(key, (0, 0.0))
                stats[key] = (n + 1, t + (y > 0.5))
    return {k: t / n for k, (n, t) in stats.items()}


def _template(s):
    return re.sub(r"-?\d+(?:\.\d+)?", "#", s)


def prior_scores(table, steps):
    return [[table.get(_template(s) + "|" + str(tasks.numbers(s)[-1:]), table.get(_template(s), 0.5)) for s in st]
            for st in steps]


def segment(steps, how):
    """The same answer cut three ways: the writer's steps, fixed-size chunks, or coarse pairs of steps."""
    if how == "steps":
        return steps
    text = " ".join(steps)
    if how == "chunks":  # 24-character pieces that ignore the writer's boundaries
        return [text[i:i + 24] for i in range(0, len(text), 24)]
    return [" ".join(steps[i:i + 2]) for i in range(0, len(steps), 2)]


def key_weighted(scores, steps):
    """Key-step aggregation: steps that state a checked fact (a count or an equation) weigh 2, restatements 1."""
    w = [2.0 if ("=" in s or "There are" in s) else 1.0 for s in steps]
    return sum(x * y for x, y in zip(w, scores)) / sum(w) if scores else 0.0


def blank(images):
    """The same images, blank white."""
    return [Image.new("RGB", im.size, "white") for im in images]


def fresh_auc(cands, probs, scores):
    """AUC of a step-score set on "fresh" steps (every earlier step right), per step kind: does it check the step?"""
    by_kind = {}
    for c in cands:
        s = scores.get(c["id"])
        p = probs[c["problem_id"]]
        if s is None or c.get("first_error") is None:
            continue
        kinds = [k for _, k, _ in tasks.gold_steps(p)]
        fe = c["first_error"]
        for i in range(min(len(s), len(kinds))):
            if fe != -1 and i > fe:
                break
            k = {"count": "perception", "arith": "visual_arith", "text_arith": "text_arith"}.get(kinds[i])
            if k:
                by_kind.setdefault(k, ([], []))
                by_kind[k][0].append(s[i])
                by_kind[k][1].append(fe != i)
    return {k: round(bon.auc(*v), 4) for k, v in sorted(by_kind.items())}
