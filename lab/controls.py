"""Controls: what a trained PRM must beat to show that it checks steps rather than guessing.

- prior-only: P(step right | its template and the number it claims), counted on the train labels (no image, no
  reasoning: a prototype's PRM learned exactly this, "7 is never a count");
- the base model's own step likelihood: a zero-shot verifier (is the PRM doing more than the base already knew?);
- the image blanked: a PRM that reads the image must lose its perception skill;
- key-step weighting against equal weights (the cuts of the segmentation ablation are steps.CUTS).
bench.py reads them into its controls and segmentation tables.
"""
import re

from PIL import Image

from common import metrics, tasks
from common.answers import numbers
from prm import per_step, step_logprobs


def step_likelihood(model, processor, images, questions, steps, batch_size=32):
    """The base model's own belief in each step: exp(mean log-prob of the step's tokens) given the steps before it,
    the steps written as the base writes them (prm.step_logprobs). A zero-shot verifier: is the PRM doing more
    than the base already knew? One list per answer, None where skipped (batched as prm.per_step batches)."""
    def read(batch):
        return step_logprobs(model, batch).exp()
    return per_step(read, processor, images, questions, steps, True, batch_size)[0]


def prior_table(label_recs):
    """The prior-only baseline: P(step right | its template and claimed value) from the train labels alone."""
    stats = {}
    for r in label_recs:
        for s, y in zip(r["completions"], r["labels"]):
            for key in (_template(s), _template(s) + "|" + str(numbers(s)[-1:])):
                n, t = stats.get(key, (0, 0.0))
                stats[key] = (n + 1, t + (y > 0.5))
    return {k: t / n for k, (n, t) in stats.items()}


def _template(s):
    return re.sub(r"-?\d+(?:\.\d+)?", "#", s)


def prior_scores(table, steps):
    return [[table.get(_template(s) + "|" + str(numbers(s)[-1:]), table.get(_template(s), 0.5)) for s in st]
            for st in steps]


def key_weighted(scores, steps):
    """Key-step aggregation: steps that state a checked fact (a count or an equation) weigh 2, restatements 1."""
    w = [2.0 if ("=" in s or "There are" in s) else 1.0 for s in steps]
    return sum(x * y for x, y in zip(w, scores)) / sum(w) if scores else 0.0


def blank(images):
    """The same images, blank white."""
    return [Image.new("RGB", im.size, "white") for im in images]


def fresh_items(cand, prob, scores):
    """One candidate's "fresh" steps (every earlier step right) with a checkable kind: [{"kind", "score", "label"}]
    (label: the step is right). Perception is a count; visual / text arithmetic an equation of either family."""
    kinds, fe, out = [k for _, k, _ in tasks.gold_steps(prob)], cand.get("first_error"), []
    if fe is None or scores is None:
        return out
    for i in range(min(len(scores), len(kinds))):
        if fe != -1 and i > fe:
            break
        k = {"count": "perception", "arith": "visual_arith", "text_arith": "text_arith"}.get(kinds[i])
        if k:
            out.append({"kind": k, "score": scores[i], "label": fe != i})
    return out


def fresh_auc(cands, probs, scores):
    """AUC of a step-score set on fresh steps, per step kind: does it check the step, or guess?"""
    by_kind = {}
    for c in cands:
        for x in fresh_items(c, probs[c["problem_id"]], scores.get(c["id"])):
            by_kind.setdefault(x["kind"], ([], []))
            by_kind[x["kind"]][0].append(x["score"])
            by_kind[x["kind"]][1].append(x["label"])
    return {k: round(metrics.auc(*v), 4) for k, v in sorted(by_kind.items())}
