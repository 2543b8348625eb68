"""Policies: who writes the answers that reward models judge. A policy samples whole solutions to a problem, or
continues a partial one from its steps so far (what the tree search and step search need):

    policy.rollout(problem, prefix_steps, n, seed) -> [{"steps", "answer", ...}]    # n continuations
    policy.rollout_many([(problem, prefix_steps, n, seed), ...])                   # many prefixes at once
    policy.next_steps([(problem, prefix_steps, n, seed), ...])     # one more step each (search.py), "done" if last

Two here: SyntheticPolicy, the suite's sampler (it knows each step's truth and errs at set rates, so every
label can be checked), and VLMPolicy, any checkpoint the loader reads (the tiny base writes "Step k:" lines). A
served model (vLLM, SGLang) is the same kind of object: lab/api.py's ServedPolicy.

    python policy.py --n 40 --out out/suite      # 40 test problems, 4 sampled answers each, labels, sheet.png
    python policy.py --model tiny-strong --temperature 0.7 --split tune --n 80 --cands 16 --out out/w --stats
                                                 # a checkpoint's answers instead, and how right they are per kind
"""
import argparse
import os
import random
from dataclasses import fields

from common import cli, data
from common.answers import extract_answer, match_answer, numbers
from common.model import generate, load
from common.pictures import contact_sheet
from common.tasks import (OPS, PROGRAMS, SPLITS, FORMATS, Suite, operand, first_error, format_steps, gold_values,
                          image_of, labelled, make_problems, seed_of, step_text, world, write_problems)
from steps import split_steps

# Error rates per step kind: perception (count: misread image; read: misread a number of the question), arithmetic
# slips, and a rare lucky recovery (the final answer right after a wrong chain). Scaled by the strength.
RATES = {"count": 0.2, "read": 0.06, "arith": 0.15, "lucky": 0.03}
STRENGTHS = {"strong": 0.5, "default": 1.0, "weak": 1.5}



def _wrong(rng, truth, lo, hi):
    """A wrong value from the same range as right ones (so the value alone says nothing)."""
    choices = [v for v in range(lo, hi + 1) if v != truth]
    return rng.choice(choices)


def _shift(v, offset, lo, hi):
    """The trap's systematic misreading: off by one, kept inside the range."""
    return v + offset if lo <= v + offset <= hi else v - offset


def sample(prob, n, prefix=None, rng=None, strength="default", suite=Suite()):
    """n sampled solutions [{"steps", "answer"}] of the synthetic policy; with `prefix` (a list of step texts) each
    continues that partial solution (its claimed values carried on, errors propagate)."""
    rng = rng or random.Random(seed_of("sample", prob["id"]))
    k = STRENGTHS[strength] if isinstance(strength, str) else float(strength)
    prog, f, trap = PROGRAMS[prob["kind"]], prob["facts"], prob.get("trap")
    gold = gold_values(prob)
    prefix = list(prefix or [])
    out = []
    for _ in range(n):
        steps, values = list(prefix), [(numbers(s) or [0.0])[-1] for s in prefix]
        values = [int(v) if float(v).is_integer() else v for v in values]
        for i in range(len(prefix), len(prog)):
            spec, trapped = prog[i], trap is not None and trap["step"] == i and rng.random() < trap["p"]
            if spec[0] == "count":
                v = f[f[spec[1]]]
                if trapped:
                    v = _shift(v, trap["offset"], 1, suite.count_max)
                elif rng.random() < RATES["count"] * k:
                    v = _wrong(rng, v, 1, suite.count_max)
                nums = [v]
            elif spec[0] == "arith":
                ab = []
                for j, ref in enumerate(spec[2:]):
                    x = operand(prob, ref, values)
                    if ref[0] == "f":
                        if trapped and j == 0:
                            x = _shift(x, trap["offset"], 2, suite.num_max)
                        elif rng.random() < RATES["read"] * k:
                            x = _wrong(rng, x, 2, suite.num_max)
                    ab.append(x)
                r = OPS[spec[1]](*ab)
                if rng.random() < RATES["arith"] * k:
                    r = r + rng.choice([-2, -1, 1, 2]) if spec[1] != "*" else (ab[0] + rng.choice([-1, 1])) * ab[1]
                nums = [ab[0], ab[1], r]
            else:
                v = values[spec[1]]
                if v != gold[-1] and rng.random() < RATES["lucky"] * k:
                    v = gold[-1]  # a lucky recovery: the right answer after a wrong chain
                nums = [v]
            values.append(nums[-1])
            steps.append(step_text(prob, spec, nums))
        out.append({"steps": steps, "answer": str(values[-1])})
    return out


def candidate(problem, cid, solution, policy, text=None):
    """A candidate record from one solution: its answer checked against the gold one and, for a suite problem, the
    oracle's first wrong step."""
    rec = {"id": cid, "problem_id": problem["id"], "steps": solution["steps"], "answer": solution["answer"],
           "correct": match_answer(solution["answer"], problem["answer"], problem.get("options")),
           "policy": policy, "text": text if text is not None else solution.get("text", "")}
    if "facts" in problem:  # a suite problem: the oracle knows each step
        rec["first_error"] = first_error(problem, solution["steps"])
    return rec


def candidates(prob, n, seed=0, strength="default", policy=None):
    """n candidate records for a problem from the synthetic sampler, each written in a writer's format."""
    rng = random.Random(seed_of(seed, prob["id"], strength))
    out = []
    for j, s in enumerate(sample(prob, n, rng=rng, strength=strength)):
        fmt = rng.choice(FORMATS)
        cid = f"{prob['id']}-{strength[0] if isinstance(strength, str) else 's'}{j:02d}"
        out.append(candidate(prob, cid, s, policy or f"synthetic-{strength}", format_steps(s["steps"], fmt)))
    return out


def continuation_head(prefix_steps):
    """What a model continuing a partial solution is given: the steps so far, then the next "Step k: " header."""
    done = format_steps(prefix_steps) + "\n" if prefix_steps else ""
    return done + f"Step {len(prefix_steps) + 1}: "


def read_solution(text, prefix_steps=None):
    """A model's new text (continuing continuation_head(prefix_steps) when given) -> {"text", "steps", "answer"}:
    the prefix kept verbatim, the new text cut into steps, the final answer read."""
    if prefix_steps is None:
        new_steps = split_steps(text)
    else:
        new_steps = split_steps(f"Step {len(prefix_steps) + 1}: " + text)
    all_steps = list(prefix_steps or []) + new_steps
    return {"text": text, "steps": all_steps, "answer": extract_answer(all_steps) if all_steps else None}


def step_marker(k):
    """What opens step k (from 1) after the steps before it, as the base writes solutions: where generation of one
    more step stops (so the steps' texts, markers included, add up to the whole answer's)."""
    return f"\nStep {k}: "


def read_step(text, prefix_steps):
    """A continuation stopped at the next step's marker -> {"text": all it wrote, "steps": the prefix and the new
    step, "answer", "done"}: done when no marker follows the step (the policy ended the solution there, or ran
    out of tokens)."""
    step, marker, _ = text.partition("\nStep ")
    return {**read_solution(step, prefix_steps), "text": text, "done": not marker}


def solve(model, processor, images, questions, prefix_steps=None, max_new_tokens=96, temperature=0.0, seed=0):
    """Write solutions and read them: generate, cut the new text into steps, extract the final answer. With
    prefix_steps (one list of steps each) the model continues "Step 1: .. Step k+1: " and the prefix is kept
    verbatim. -> [{"text": new text, "steps", "answer"}]."""
    heads = None if prefix_steps is None else [continuation_head(p) for p in prefix_steps]
    texts = generate(model, processor, images, questions, heads, max_new_tokens, temperature, seed)
    return [read_solution(t, None if heads is None else prefix_steps[i]) for i, t in enumerate(texts)]


class SyntheticPolicy:
    """sample() continuing a prefix; deterministic in (seed, problem, prefix)."""

    def __init__(self, strength="default"):
        self.strength = strength

    def rollout(self, problem, prefix_steps, n, seed):
        rng = random.Random(seed_of(seed, problem["id"], len(prefix_steps), *prefix_steps))
        return sample(problem, n, prefix=list(prefix_steps), rng=rng, strength=self.strength)

    def rollout_many(self, requests):
        """[(problem, prefix_steps, n, seed)] -> one list of rollouts each."""
        return [self.rollout(*r) for r in requests]

    def next_steps(self, requests):
        """rollout_many cut to one more step each, written as the base writes it (the step, then the next step's
        marker unless it was the last) and read back by read_step."""
        out = []
        for (problem, prefix_steps, _, _), rollouts in zip(requests, self.rollout_many(requests)):
            k = len(prefix_steps)
            texts = ["".join(r["steps"][k:k + 1]) + (step_marker(k + 2) if len(r["steps"]) > k + 1 else "")
                     for r in rollouts]
            out.append([read_step(t, prefix_steps) for t in texts])
        return out


class VLMPolicy:
    """Any checkpoint the loader reads, continuing "Step 1: ... Step i+1: " sampled at a temperature."""

    def __init__(self, model_name_or_path, temperature=1.0, max_new_tokens=96, batch_size=16, device=None):
        self.model, self.processor = load(model_name_or_path, device=device)
        self.temperature, self.max_new_tokens, self.batch_size = temperature, max_new_tokens, batch_size

    def rollout(self, problem, prefix_steps, n, seed):
        image = image_of(problem)
        out = []
        for b in range(0, n, self.batch_size):  # the prefix kept verbatim (it is a node of the tree)
            m = min(self.batch_size, n - b)
            out += solve(self.model, self.processor, [image] * m, [problem["question"]] * m, [prefix_steps] * m,
                         self.max_new_tokens, self.temperature, seed=seed_of(seed, problem["id"], b, *prefix_steps))
        return [{"steps": s["steps"], "answer": s["answer"]} for s in out]

    def rollout_many(self, requests, rows=None):
        """[(problem, prefix_steps, n, seed)] -> one list of rollouts ({"steps", "answer", "text": the new text})
        each, generated `rows` at a time across requests (one generate call serves many prefixes of many
        problems). Deterministic for the same requests."""
        return self.continue_many(requests, rows, one_step=False)

    def next_steps(self, requests, rows=None):
        """rollout_many stopped at the next step's marker: one more step each, read by read_step. The same samples
        as rollout_many's up to the stop (a test checks it)."""
        return self.continue_many(requests, rows, one_step=True)

    def continue_many(self, requests, rows, one_step):
        """rollout_many (one_step False) and next_steps (True: each text stops at its next step's marker)."""
        rows = rows or self.batch_size
        flat = [(p, list(pre), seed_of(seed, p["id"], j, *pre)) for p, pre, n, seed in requests for j in range(n)]
        texts = []
        for b in range(0, len(flat), rows):
            chunk = flat[b:b + rows]
            # one-step generation stops at any of the chunk's next markers (prefixes of several lengths share it)
            stop = sorted({step_marker(len(pre) + 2) for _, pre, _ in chunk}) if one_step else None
            texts += generate(self.model, self.processor, [image_of(p) for p, _, _ in chunk],
                              [p["question"] for p, _, _ in chunk], [continuation_head(pre) for _, pre, _ in chunk],
                              self.max_new_tokens, self.temperature, seed=chunk[0][2], stop=stop)
        read = read_step if one_step else read_solution
        res, i = [], 0
        for _, pre, n, _ in requests:
            res.append([read(t, list(pre)) for t in texts[i:i + n]])
            i += n
        return res


def model_candidates(probs, model, n, seed, temperature):
    """n answers a problem written by a checkpoint the loader reads (VLMPolicy) at a temperature, as candidates."""
    drawn = [{k: v for k, v in p.items() if k != "image"} for p in probs]  # its path is relative to OUT: redrawn
    sols = VLMPolicy(model, temperature, batch_size=128).rollout_many([(p, [], n, seed) for p in drawn])
    return [candidate(p, f"{p['id']}-m{j:02d}", s, model) for p, ss in zip(probs, sols) for j, s in enumerate(ss)]


def write_suite(out, n, seed=0, n_cands=4, strength="default", split="test", suite=Suite(), model=None,
                temperature=1.0):
    """Problems, images, candidates (the sampler's at `strength`, or `model`'s at `temperature`), the oracle's
    labels and a contact sheet under `out`."""
    probs = write_problems(out, make_problems(n, seed, split, suite))
    cands = (model_candidates(probs, model, n_cands, seed, temperature) if model else
             [c for p in probs for c in candidates(p, n_cands, seed, strength)])
    by_id = {p["id"]: p for p in probs}
    labels = [labelled(by_id[c["problem_id"]], c, by_id[c["problem_id"]]["image"]) for c in cands]
    data.write_jsonl(os.path.join(out, "candidates.jsonl"), cands, "candidate")
    data.write_jsonl(os.path.join(out, "labels.jsonl"), labels, "labelled")
    contact_sheet(probs, cands, os.path.join(out, "images"), os.path.join(out, "sheet.png"))
    return probs, cands, labels


# The least value of each setting (a trap rate is also at most 1)
LEAST = {"n": 1, "cands": 1, "count_max": 1, "distractors": 0, "num_max": 2, "trap_rate": 0, "trap_p": 0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--n", type=int, default=8, help="number of problems (default 8)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="same seed, same problems and candidates (default 0)")
    ap.add_argument("--cands", type=int, default=4, help="candidates per problem (default 4)")
    ap.add_argument("--strength", default="default", choices=list(STRENGTHS),
                    help="sampler strength (default: default)")
    ap.add_argument("--model", default="",
                    help="answers written by this checkpoint instead of the sampler: tiny | tiny-strong | a folder")
    ap.add_argument("--temperature", type=cli.within(float, 0.0), default=1.0,
                    help="--model's sampling temperature (default 1.0; 0: greedy)")
    ap.add_argument("--split", default="test", choices=list(SPLITS),
                    help="content split (default test: held out from train and from the tiny base)")
    ap.add_argument("--stats", action="store_true",
                    help="also print the world: per kind, the share right, lucky (right after a wrong step), "
                         "every step right, steps, where the first wrong step falls")
    for fl in fields(Suite):
        if fl.type in (int, float, "int", "float"):
            ap.add_argument(f"--{fl.name.replace('_', '-')}", type=type(fl.default), default=fl.default,
                            help=f"difficulty knob (default {fl.default})")
    a = ap.parse_args(argv)
    for k, least in LEAST.items():  # a size or knob out of range: an error naming it
        most = 1 if k.startswith("trap") else float("inf")
        if not least <= getattr(a, k) <= most:
            also = " and at most 1" if k.startswith("trap") else ""
            raise ValueError(f"--{k.replace('_', '-')} {getattr(a, k)}: expected at least {least}{also}")
    suite = Suite(**{fl.name: getattr(a, fl.name) for fl in fields(Suite) if hasattr(a, fl.name)})
    probs, cands, _ = write_suite(a.out, a.n, a.seed, a.cands, a.strength, a.split, suite, a.model or None,
                                  a.temperature)
    accuracy = sum(c["correct"] for c in cands) / len(cands)
    print(f"wrote {len(probs)} problems, {len(cands)} candidates (accuracy {accuracy:.2f}) to {a.out}\n"
          f"look at {os.path.join(a.out, 'sheet.png')}")
    if a.stats:
        print(f"{'kind':<15} {'answers':>7} {'right':>6} {'lucky':>6} {'faithful':>8} {'steps':>5}  first wrong step")
        for kind, w in world(probs, cands).items():
            print(f"{kind:<15} {w['answers']:>7} {w['right']:>6.3f} {w['lucky']:>6.3f} {w['faithful']:>8.3f} "
                  f"{w['steps']:>5.2f}  {w['first_error_at']}")


if __name__ == "__main__":
    cli.run(main)
