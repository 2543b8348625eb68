"""The evidence: per-problem Best-of-N results -> tables with 95% intervals, paired comparisons, and a verdict for
each finding of the paper. Pure Python + numpy; bench.py calls it, and it can redo any comparison from the rows
bench.py keeps (OUT/per_problem.jsonl):

    python -m lab.evidence out/bench/per_problem.jsonl            # every comparison and verdict again
    python -m lab.evidence out/bench/per_problem.jsonl --a prm_mean --b orm --pool synthetic --n 16 --part visual

A row: {"problem", "content" (the cluster key: problems that share content are resampled together), "family",
"pool", "method", "acc": {"N": expected accuracy of the method's pick from a random N-subset of the pool}}.
A finding "holds" when its paired interval excludes 0 in the paper's direction, is "opposite" when it excludes 0
the other way, and is "not resolved" otherwise (docs/DESIGN.md "Evidence").
"""

import argparse
import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np

import bon
from common import cli, data, metrics, tasks
from lab.controls import fresh_items, key_weighted
from steps import CUTS

PARTS = ("all", "visual", "text")


def index(rows):
    """{(pool, method): {problem: row}}: the lookup every comparison reads. Two rows for one (pool, method,
    problem) are an error naming both (a second run appended to the same file would otherwise win silently).
    """
    out = defaultdict(dict)
    for i, r in enumerate(rows, 1):
        seen = out[(r["pool"], r["method"])].get(r["problem"])
        if seen is not None:
            where = [f"line {x.get('line', '?')}" for x in (seen, r)] if "line" in r else [f"row {i}"]
            raise ValueError(
                f"problem {r['problem']}, pool {r['pool']}, method {r['method']}: two rows "
                f"({', '.join(where)}); one run's rows per file"
            )
        out[(r["pool"], r["method"])][r["problem"]] = r
    return out


def _select(ix, pool, method, part, problems=None):
    rs = ix.get((pool, method), {})
    keep = [
        p
        for p in sorted(rs)
        if (part == "all" or rs[p]["family"] == part) and (problems is None or p in problems)
    ]
    return [rs[p] for p in keep]


def cell(ix, pool, method, n, part="all", seed=0):
    """One table cell: mean accuracy@n over the part's problems with its bootstrap interval (clusters: content)."""
    rs = [r for r in _select(ix, pool, method, part) if str(n) in r["acc"]]
    ci = metrics.bootstrap([r["acc"][str(n)] for r in rs], [r["content"] for r in rs], seed=seed)
    mc = [r.get("mc_var", {}).get(str(n), 0.0) for r in rs]
    ci["mc_se"] = float(np.sqrt(sum(mc)) / len(rs)) if rs else None  # Monte-Carlo error of a sampled cell
    return ci


def table(ix, pool, methods, ns, parts=PARTS, seed=0):
    """{part: {method: {"N": cell}}} for the methods present in the pool."""
    return {
        part: {m: {str(n): cell(ix, pool, m, n, part, seed) for n in ns} for m in methods if (pool, m) in ix}
        for part in parts
    }


def compare(ix, pool, a, b, n=16, part="all", problems=None, seed=0, pool_b=None, ix_b=None):
    """Paired a - b at N=n over the problems both have (pool_b: b read from another pool; ix_b: from another run's
    rows, the same test problems)."""
    ra = {r["problem"]: r for r in _select(ix, pool, a, part, problems)}
    rb = {r["problem"]: r for r in _select(ix if ix_b is None else ix_b, pool_b or pool, b, part, problems)}
    both = [p for p in ra if p in rb and str(n) in ra[p]["acc"] and str(n) in rb[p]["acc"]]
    ci = metrics.paired(
        [ra[p]["acc"][str(n)] for p in both],
        [rb[p]["acc"][str(n)] for p in both],
        [ra[p]["content"] for p in both],
        seed=seed,
        adjusted=adjusted_level(),
    )
    return {**ci, "a": a, "b": b, "pool": pool, "n_best": n, "part": part}


def gain(ix, pool, method, n, part):
    """Per-problem gain of `method` at N=n over one random sample (N=1): (gains, clusters)."""
    rs = [r for r in _select(ix, pool, method, part) if str(n) in r["acc"]]
    return [r["acc"][str(n)] - r["acc"]["1"] for r in rs], [r["content"] for r in rs]


def compare_gain(ix, pool, method, n=16, seed=0):
    """Text gain minus visual gain of `method` (different problems: resampled apart)."""
    (gt, ct), (gv, cv) = gain(ix, pool, method, n, "text"), gain(ix, pool, method, n, "visual")
    return {
        **metrics.unpaired(gt, gv, ct, cv, seed=seed, adjusted=adjusted_level()),
        "a": f"{method} gain (text)",
        "b": f"{method} gain (visual)",
        "pool": pool,
        "n_best": n,
        "part": "text - visual",
    }


def compare_diff(ix, pool, a, b, n=16, seed=0):
    """(a - b on visual) minus (a - b on text): does a difference matter more on visual items?"""
    d = {}
    for part in ("visual", "text"):
        ra = {r["problem"]: r for r in _select(ix, pool, a, part)}
        rb = {r["problem"]: r for r in _select(ix, pool, b, part)}
        both = [p for p in ra if p in rb]
        d[part] = (
            [ra[p]["acc"][str(n)] - rb[p]["acc"][str(n)] for p in both],
            [ra[p]["content"] for p in both],
        )
    (dv, cv), (dt, ct) = d["visual"], d["text"]
    return {
        **metrics.unpaired(dv, dt, cv, ct, seed=seed, adjusted=adjusted_level()),
        "a": f"{a} - {b} (visual)",
        "b": f"{a} - {b} (text)",
        "pool": pool,
        "n_best": n,
        "part": "visual - text",
    }


def other_cuts():
    """The segmentation ablation's cuts besides the writer's steps: steps.CUTS, then "split" (split_steps of the
    answer's text, as a reader would cut it)."""
    return [cut for cut in CUTS if cut != "steps"] + ["split"]


# The headline pools and the prefix of their comparisons' keys: the base's own answers, a stronger policy's.
HEADLINES = {"base": "headline", "strong": "strong"}


def headline(ix, pool, n=16, seed=0):
    """A headline pool's comparisons: the PRM against what one gets for free (majority vote, the ORM, the base's
    own step likelihood), and the PRM-weighted vote against majority."""
    return {
        "prm_vs_majority": compare(ix, pool, "prm_head", "majority", n, seed=seed),
        "prm_vs_orm": compare(ix, pool, "prm_head", "orm", n, seed=seed),
        "prm_vs_base_likelihood": compare(ix, pool, "prm_head", "base_likelihood_min", n, seed=seed),
        "weighted_vs_majority": compare(ix, pool, "weighted_prm", "majority", n, seed=seed),
    }


# The judge table (bench.py --judges): each VLM judge's three ways to pick, as bon rules over its ratings.
JUDGE_MODES = {"orm": "max:{}.orm", "prm": "max:{}.prm:mean", "hybrid": "max:{}.prm:last2"}


def judge_methods(judges):
    """{"JUDGE MODE": bon rule} for each judge and mode: ORM mode (its whole-answer rating), PRM mode (the mean of
    its step ratings, as the paper's judge PRM) and the hybrid (the mean of the last 2 step ratings)."""
    return {f"{j} {mode}": rule.format(j) for j in judges for mode, rule in JUDGE_MODES.items()}


def judge_comparisons(ix, judges, n=16, seed=0):
    """The paper's judge findings over the judge table's pool: the best judge (chosen on dev) in PRM vs ORM mode by
    family, its hybrid against both, its text vs visual gain, the trained PRM against it, and the judge made from
    the base against the one made from the stronger solver with the same rating training."""
    best, mode = judges["best"]
    c = {
        "judges_prm_vs_orm_visual": compare(ix, "judges", f"{best} prm", f"{best} orm", n, "visual", seed=seed),
        "judges_prm_vs_orm_text": compare(ix, "judges", f"{best} prm", f"{best} orm", n, "text", seed=seed),
        "judges_hybrid_vs_prm": compare(ix, "judges", f"{best} hybrid", f"{best} prm", n, seed=seed),
        "judges_hybrid_vs_orm": compare(ix, "judges", f"{best} hybrid", f"{best} orm", n, seed=seed),
        "judges_text_gain_vs_visual_gain": compare_gain(ix, "judges", f"{best} {mode}", n, seed),
        "prm_vs_best_judge": compare(ix, "judges", "prm_head", f"{best} {mode}", n, seed=seed),
    }
    if judges.get("solver_pair"):
        weaker, stronger = judges["solver_pair"]
        c["judge_weaker_vs_stronger_solver"] = compare(ix, "judges", f"{weaker} {mode}", f"{stronger} {mode}", n,
                                                       seed=seed)
    return c


def comparisons(ix, n=16, kept=None, seed=0, judges=None):
    """Every paired comparison the README makes. Methods ending in _head use the aggregation chosen on tune;
    judges: the judge table's best judge and mode ({"best": (judge, mode), "solver_pair": (base's, stronger's)})."""
    PRM, SYN = "prm_head", "synthetic"  # the tuned PRM; the synthetic samplers' pool
    c = {
        # the two headlines: the tiny base's own answers (a policy as strong as the reward models' base), and a
        # stronger policy's (the paper's setting)
        **{f"{name}_{key}": comp for pool, name in HEADLINES.items()
           for key, comp in headline(ix, pool, n, seed).items()},
        "prm_vs_orm": compare(ix, SYN, PRM, "orm", n, seed=seed),
        "prm_vs_orm_visual": compare(ix, SYN, PRM, "orm", n, "visual", seed=seed),
        "prm_vs_orm_text": compare(ix, SYN, PRM, "orm", n, "text", seed=seed),
        "prm_vs_majority": compare(ix, SYN, PRM, "majority", n, seed=seed),
        # the base's likelihood with its own fixed aggregation (min): the PRM's tuned one can be unfair to it (last2
        # reads restatements the base always finds likely)
        "prm_vs_base_likelihood": compare(ix, SYN, PRM, "base_likelihood_min", n, seed=seed),
        "weighted_vs_majority": compare(ix, SYN, "weighted_prm", "majority", n, seed=seed),
        "last2_vs_min": compare(ix, SYN, "prm_last2", "prm_min", n, seed=seed),
        "last2_vs_mean": compare(ix, SYN, "prm_last2", "prm_mean", n, seed=seed),
        "last2_vs_orm": compare(ix, SYN, "prm_last2", "orm", n, seed=seed),
        "text_gain_vs_visual_gain": compare_gain(ix, SYN, PRM, n, seed),
        **{f"steps_vs_{cut}": compare(ix, SYN, PRM, f"{cut}_head", n, seed=seed) for cut in other_cuts()},
        "chunks_hurt_visual_more": compare_diff(ix, SYN, PRM, "chunks_head", n, seed),
        "key_vs_equal": compare(ix, SYN, "key_weighted", "equal_weights", n, seed=seed),
        # faithful@N: does the PRM pick answers whose every step is right, not just the final answer?
        "faithful_prm_vs_orm": compare(ix, "base_faithful", PRM, "orm", n, seed=seed),
        "faithful_prm_vs_base_likelihood": compare(
            ix, "base_faithful", PRM, "base_likelihood_min", n, seed=seed
        ),
        "faithful_prm_vs_majority": compare(ix, "base_faithful", PRM, "majority", n, seed=seed),
        "strong_faithful_prm_vs_orm": compare(ix, "strong_faithful", PRM, "orm", n, seed=seed),
        "strong_faithful_prm_vs_base_likelihood": compare(
            ix, "strong_faithful", PRM, "base_likelihood_min", n, seed=seed
        ),
        "synthetic_faithful_prm_vs_orm": compare(ix, "synthetic_faithful", PRM, "orm", n, seed=seed),
        "mixed_vs_visual_only_on_text": compare(ix, SYN, PRM, "prm_visual_head", n, "text", seed=seed),
        "mixed_vs_text_only_on_visual": compare(ix, SYN, PRM, "prm_text_head", n, "visual", seed=seed),
        "visual_only_vs_text_only_on_visual": compare(
            ix, SYN, "prm_visual_head", "prm_text_head", n, "visual", seed=seed
        ),
        "text_only_vs_visual_only_on_text": compare(
            ix, SYN, "prm_text_head", "prm_visual_head", n, "text", seed=seed
        ),
    }
    if (
        kept is not None
    ):  # the ViLBench filter: kept on half A of each pool, measured on half B (other candidates)
        half = n
        if ("half_b", PRM) in ix:  # the largest N a half-pool has
            half = max(int(k) for r in ix[("half_b", PRM)].values() for k in r["acc"])
        c["filtered_prm_vs_orm"] = compare(ix, "half_b", PRM, "orm", half, problems=set(kept), seed=seed)
        rest = {p for p in ix.get(("half_b", PRM), {})} - set(kept)
        c["unfiltered_prm_vs_orm"] = compare(ix, "half_b", PRM, "orm", half, problems=rest, seed=seed)
    if judges and judges.get("best"):
        c.update(judge_comparisons(ix, judges, n, seed))
    return {k: v for k, v in c.items() if v["n"]}


# The paper's findings (ViLBench's abstract, Sec. 3-5 and conclusion), each read off one or two comparisons.
FINDINGS = [
    (
        "a trained PRM picks better than what one gets for free: majority vote, an ORM, the base's own likelihood "
        "(the base's own answers)",
        ("headline_prm_vs_majority", "headline_prm_vs_orm", "headline_prm_vs_base_likelihood"),
        "all",
    ),
    (
        "... and finds the first wrong step better than the ORM and the base's likelihood (first-error F1)",
        ("headline_f1_prm_vs_orm", "headline_f1_prm_vs_base_likelihood"),
        "all",
    ),
    (
        "the paper's setting: a PRM fine-tuned from the small base picks a stronger policy's answers better than "
        "majority vote, an ORM, the base's likelihood",
        ("strong_prm_vs_majority", "strong_prm_vs_orm", "strong_prm_vs_base_likelihood"),
        "all",
    ),
    (
        "... and finds the stronger policy's first wrong step better than the ORM and the base's likelihood",
        ("strong_f1_prm_vs_orm", "strong_f1_prm_vs_base_likelihood"),
        "all",
    ),
    ("neither ORM nor PRM wins everywhere", ("prm_vs_orm_visual", "prm_vs_orm_text"), "split"),
    (
        "the hybrid (score the last 2 steps) >= full PRM (mean) and ORM",
        ("last2_vs_mean", "last2_vs_orm"),
        "all",
    ),
    (
        "text-dominant items gain more from Best-of-N than vision-dominant ones",
        ("text_gain_vs_visual_gain",),
        "all",
    ),
    ("PRM > ORM on the ViLBench-filtered items", ("filtered_prm_vs_orm",), "all"),
    ("unclear step divisions hurt a PRM (writer's steps > 24-character chunks)", ("steps_vs_chunks",), "all"),
    ("... and hurt most on visual items", ("chunks_hurt_visual_more",), "all"),
    ("weighting key steps beats equal weights", ("key_vs_equal",), "all"),
    # not the paper's: what step scores are for beyond Best-of-N, steering the policy while it writes (search.py)
    ("step search: a PRM guides the policy better than an ORM read on the prefix", ("search_prm_vs_orm",), "all"),
    ("step search guided by the PRM beats the PRM's Best-of-N at equal generated tokens",
     ("search_prm_vs_best_of_n",), "all"),
    (
        "a PRM trained on one domain generalises poorly; mixed data helps",
        ("mixed_vs_visual_only_on_text", "mixed_vs_text_only_on_visual"),
        "all",
    ),
    # the paper's first half: VLMs as judges (the best judge chosen on dev, over the stronger policy's answers)
    (
        "VLM judges: neither ORM mode nor PRM mode wins everywhere (the best judge, by family)",
        ("judges_prm_vs_orm_visual", "judges_prm_vs_orm_text"),
        "split",
    ),
    (
        "VLM judges: the hybrid (rate the last 2 steps) beats PRM mode and ORM mode",
        ("judges_hybrid_vs_prm", "judges_hybrid_vs_orm"),
        "all",
    ),
    (
        "VLM judges: text-dominant items gain more from a judge's Best-of-N than vision-dominant ones",
        ("judges_text_gain_vs_visual_gain",),
        "all",
    ),
    ("a trained PRM picks better than the best VLM judge (ViLPRM vs the judges)", ("prm_vs_best_judge",), "all"),
    (
        "a stronger solver is not always a better judge (here: the judge made from the base beats the one made "
        "from the stronger solver, same rating training)",
        ("judge_weaker_vs_stronger_solver",),
        "all",
    ),
]


def finding_comparisons():
    """Every comparison a finding reads, once each: the family the multiplicity adjustment counts."""
    return list(dict.fromkeys(k for _, keys, _ in FINDINGS for k in keys))


def adjusted_level():
    """Bonferroni over the findings' comparisons: each interval at 1 - 0.05 / m, so that all m hold together with
    95% confidence. (From the same 2000 replicates: its bounds rest on the few most extreme ones.)"""
    return 1 - (1 - metrics.LEVEL) / len(finding_comparisons())


def combine(cs, how, adjusted=False):
    """One finding's verdict from its comparisons' intervals -> (verdict, the comparisons that decide it).
    "all": holds when every comparison holds; opposite when any is resolved the other way (those decide it);
    too few when one has too few clusters to read; else not resolved. "split" (neither wins everywhere): holds
    when the two resolve in opposite directions, opposite when both are resolved the same way."""
    keys = list(cs)
    each = {k: metrics.verdict(c, adjusted=adjusted) for k, c in cs.items()}
    if how == "split":
        resolved = [k for k in keys if each[k] in ("holds", "opposite")]
        directions = {each[k] for k in resolved}
        if len(directions) == 2:
            return "holds", keys
        if len(resolved) == len(keys):
            return "opposite", keys
        return ("too few" if "too few" in each.values() else "not resolved"), []
    against = [k for k in keys if each[k] == "opposite"]
    if against:
        return "opposite", against
    if all(v == "holds" for v in each.values()):
        return "holds", keys
    return ("too few" if "too few" in each.values() else "not resolved"), []


def verdicts(comps):
    """[{finding, verdict, verdict_adjusted, decided_by, comparisons, each}] for the paper's findings: the verdict
    from the 95% intervals and from the multiplicity-adjusted ones (adjusted_level), the comparisons that decide
    each, and every comparison's own verdicts ("each": {key: [raw, adjusted]})."""
    out = []
    for name, keys, how in FINDINGS:
        cs = {k: comps[k] for k in keys if k in comps}
        if len(cs) < len(keys):
            out.append(
                {
                    "finding": name,
                    "verdict": "not run",
                    "verdict_adjusted": "not run",
                    "decided_by": [],
                    "comparisons": list(keys),
                    "each": {},
                }
            )
            continue
        verdict, decided_by = combine(cs, how)
        adjusted, decided_by_adjusted = combine(cs, how, adjusted=True)
        each = {k: [metrics.verdict(c), metrics.verdict(c, adjusted=True)] for k, c in cs.items()}
        out.append(
            {
                "finding": name,
                "verdict": verdict,
                "verdict_adjusted": adjusted,
                "decided_by": decided_by,
                "decided_by_adjusted": decided_by_adjusted,
                "comparisons": list(keys),
                "each": each,
            }
        )
    return out


def resolvable(comps):
    """The smallest paired difference this run can resolve: the median half-width of the paired intervals."""
    widths = sorted((c["hi"] - c["lo"]) / 2 for c in comps.values() if c.get("lo") is not None)
    return round(widths[len(widths) // 2], 4) if widths else None


def judged_ids(problems, n):
    """The problems the (slow) judges score: the first n/2 of each family, so both families have judge numbers."""
    fams = sorted({p["family"] for p in problems})
    per = -(-n // len(fams))
    return {p["id"] for f in fams for p in [q for q in problems if q["family"] == f][:per]}


def content(p):
    return "|".join(map(str, tasks.content_of(p)))


def segmentation_rules(head):
    """CUT_min, CUT_mean, CUT_head for the writer's steps and every other cut (scores "prm_CUT")."""
    rules = {}
    for cut in ["steps"] + other_cuts():
        key = "prm" if cut == "steps" else f"prm_{cut}"
        for agg in ("min", "mean", "head"):
            rules[f"{cut}_{agg}"] = f"max:{key}:{head if agg == 'head' else agg}"
    return rules


def method_sets(head, judges=()):
    """The rules of each pool; names ending in _head use the aggregation chosen on tune (so seeds pool); judges:
    the judge table's judges (its pool "judges": their modes beside the trained PRM and ORM)."""

    def tuned_and_min(key):  # a step-score key read with the tuned aggregation and with min
        return {f"{key}_head": f"max:{key}:{head}", f"{key}_min": f"max:{key}:min"}

    main = {k: v for k, v in bon.METHODS.items() if not k.startswith("judge")}
    main.update({"prm_last3": "max:prm:last3", "prm_head": f"max:prm:{head}"})
    syn = {
        **main,
        **tuned_and_min("base_likelihood"),
        **tuned_and_min("prm_blank"),
        **tuned_and_min("prior"),
        **tuned_and_min("orm_steps"),
        **segmentation_rules(head),
        "key_weighted": "max:prm_key",
        "equal_weights": "max:prm:mean",
        "prm_visual_head": f"max:prm_visual:{head}",
        "prm_text_head": f"max:prm_text:{head}",
    }
    half = {k: main[k] for k in ("random", "majority", "orm", "prm_head", "oracle")}
    base = {**main, **tuned_and_min("base_likelihood")}
    # faithful@N (a pick worth 1 only when every step is right by the oracle), on both pools' headline methods
    faithful = {
        k: base[k]
        for k in ("random", "majority", "weighted_prm", "orm", "base_likelihood_min", "prm_head", "oracle")
    }
    table = {k: main[k] for k in ("random", "majority", "orm", "prm_head", "oracle")}
    return {
        "synthetic": syn,
        "judges": {**table, **judge_methods(judges)},
        "base": base,
        "strong": base,
        "half_a": half,
        "half_b": half,
        "base_faithful": faithful,
        "strong_faithful": faithful,
        "synthetic_faithful": faithful,
    }


def judge_names(judge_scores):
    """The judges of a judge table's ratings ({"NAME.orm": ..., "NAME.prm": ...}), in order."""
    return list(dict.fromkeys(key.rsplit(".", 1)[0] for key in judge_scores))


def halves(cands):
    """Each pool cut in two halves of other candidates (even / odd index within each sampler): the ViLBench filter
    keeps items on half A and is measured on half B, so the same noise cannot both select and confirm."""
    return (
        [c for c in cands if int(c["id"][-2:]) % 2 == 0],
        [c for c in cands if int(c["id"][-2:]) % 2 == 1],
    )


JUDGES_POOL = "strong"  # the judge table's answers: the stronger policy's, as the paper's judges rate GPT-4o's


def problem_rows(a, problems, pools, scores, head, judge_scores=None):
    """Every Best-of-N number of the run, per test problem (exact accuracy@N): what tables and comparisons read.
    judge_scores: the judge table's ratings of the test problems it judged ({"NAME.orm" | "NAME.prm": ...})."""
    meta = {p["id"]: {"family": p["family"], "content": content(p)} for p in problems["test"]}
    synthetic = dict(scores["test_synthetic"])
    cands = pools[("test", "synthetic")]
    synthetic["prm_key"] = {
        c["id"]: key_weighted(synthetic["prm"][c["id"]], c["steps"])
        for c in cands
        if c["id"] in synthetic["prm"]
    }
    rules, rows = method_sets(head, judge_names(judge_scores or {})), []
    parts = {
        "synthetic": (problems["test"], cands, synthetic),
        "base": (problems["test"], pools[("test", "base")], scores["test_base"]),
    }
    if judge_scores:  # the judge table: the problems its judges rated, every judge's ratings beside the PRM's
        rated = {c["problem_id"] for sets in judge_scores.values() for c in pools[("test", JUDGES_POOL)]
                 if c["id"] in sets}
        parts["judges"] = ([p for p in problems["test"] if p["id"] in rated], pools[("test", JUDGES_POOL)],
                           {**scores[f"test_{JUDGES_POOL}"], **judge_scores})
    half_a, half_b = halves(cands)
    parts.update(half_a=(problems["test"], half_a, synthetic), half_b=(problems["test"], half_b, synthetic))
    parts.update(base_faithful=parts["base"], synthetic_faithful=parts["synthetic"])
    if ("test", "strong") in pools:  # a stronger policy's answers: the second headline
        parts.update(strong=(problems["test"], pools[("test", "strong")], scores["test_strong"]))
        parts.update(strong_faithful=parts["strong"])
    for name, (probs, cs, sets) in parts.items():
        pp = bon.make_pools(probs, cs, sets)
        meta_p = {pid: {**meta[pid], "pool": name} for pid in pp}
        target = "faithful" if name.endswith("_faithful") else "correct"
        rows += bon.problem_rows(pp, rules[name], bon.NS, a.seed, meta_p, target)
    return rows


def step_items(problems, pools, scores):
    """First-error inputs per test candidate (the threshold chosen on dev) and fresh-step inputs per kind, for each
    pool; keys of a headline pool end in "@base" or "@strong", and there each verifier is read a second time with a
    threshold per family ("prm_per_family@base": visual and text thresholds, each chosen on dev)."""
    keys = {
        "synthetic": {
            "prm": "prm",
            "orm": "orm_steps",
            "prm_blank": "prm_blank",
            "prior": "prior",
            "base_likelihood": "base_likelihood",
        },
        **{pool: {f"prm@{pool}": "prm", f"orm@{pool}": "orm_steps", f"base_likelihood@{pool}": "base_likelihood"}
           for pool in HEADLINES if ("test", pool) in pools},
    }
    probs = {p["id"]: p for p in problems["test"]}
    family = {p["id"]: p["family"] for split in ("dev", "test") for p in problems[split]}
    fe_items, auc_items = [], []
    for pool, names in keys.items():
        for name, key in names.items():
            dv = scores[f"dev_{pool}"].get(key, {})
            dev = [(dv[c["id"]], c["first_error"], family[c["problem_id"]]) for c in pools[("dev", pool)]
                   if c["id"] in dv]
            one = metrics.choose_threshold(*zip(*[d[:2] for d in dev])) if dev else 0.5
            thresholds = {name: {f: one for f in ("visual", "text")}}
            if pool in HEADLINES:  # beside one threshold, one per family (both chosen on dev): one may hurt a family
                thresholds[name.replace("@", "_per_family@")] = family_thresholds(dev, one)
            for c in pools[("test", pool)]:
                s = scores[f"test_{pool}"][key].get(c["id"])
                if s is None:
                    continue
                bon.check_same_steps(key, c["id"], s, len(c["steps"]))
                p = probs[c["problem_id"]]
                for item_key, by_family in thresholds.items():
                    t = by_family[p["family"]]
                    fe_items.append(
                        {
                            "key": item_key,
                            "candidate": c["id"],
                            "problem": p["id"],
                            "content": content(p),
                            "family": p["family"],
                            "true": c["first_error"],
                            "pred": metrics.predicted_first_error(s, t),
                            "threshold": t if item_key == name else f"visual {by_family['visual']}, "
                                                                    f"text {by_family['text']}",
                        }
                    )
                auc_items += [
                    {"key": name, "problem": p["id"], "content": content(p), **x}
                    for x in fresh_items(c, p, s)
                ]
    for pool in keys:
        name = "content_free" if pool == "synthetic" else f"content_free@{pool}"
        rule = content_free_rule(problems["dev"], pools[("dev", pool)])
        words = ", ".join(
            f"{family}: {'none' if at == -1 else f'step {at + 1}'}" for family, at in rule.items()
        )
        for c in pools[("test", pool)]:
            p = probs[c["problem_id"]]
            fe_items.append(
                {
                    "key": name,
                    "candidate": c["id"],
                    "problem": p["id"],
                    "content": content(p),
                    "family": p["family"],
                    "true": c["first_error"],
                    "pred": rule.get(p["family"], -1),
                    "threshold": words,
                }
            )
    return fe_items, auc_items


def family_thresholds(dev, fallback):
    """{family: the threshold chosen on that family's dev solutions alone} from dev (score, first error, family)
    triples; `fallback` for a family with none."""
    out = {}
    for family in ("visual", "text"):
        own = [(scores, first_error) for scores, first_error, f in dev if f == family]
        out[family] = metrics.choose_threshold(*zip(*own)) if own else fallback
    return out


def content_free_rule(problems, candidates, guesses=(-1, 0, 1, 2, 3)):
    """The control that reads no content: one guessed first wrong step per family (-1: none), chosen for the best
    first-error F1 on dev. A verifier must beat it to show that it reads the steps. -> {family: guess}."""
    family = {p["id"]: p["family"] for p in problems}
    dev = [
        (family[c["problem_id"]], c["first_error"])
        for c in candidates
        if c.get("first_error") is not None and c["problem_id"] in family
    ]
    families = sorted({f for f, _ in dev})
    best, best_f1 = {}, -1.0
    for choice in itertools.product(guesses, repeat=len(families)):  # the first best in this order wins a tie
        rule = dict(zip(families, choice))
        f1 = metrics.f1_of_predictions([rule[f] for f, _ in dev], [t for _, t in dev])
        if f1 > best_f1:
            best, best_f1 = rule, f1
    return best


def with_f1(comps, fe_items, seed=0):
    """comps plus the headlines' first-error F1 comparisons: the PRM vs each free verifier, on each headline pool."""
    for pool, name in HEADLINES.items():
        for free in ("orm", "base_likelihood", "content_free"):
            comps[f"{name}_f1_prm_vs_{free}"] = f1_difference(fe_items, f"prm@{pool}", f"{free}@{pool}", seed)
    return {k: v for k, v in comps.items() if v["n"]}


def f1_difference(fe_items, a, b, seed=0):
    """Paired first-error F1 difference of score keys a - b on the solutions both scored (clusters: content)."""
    A = {i["candidate"]: i for i in fe_items if i["key"] == a}
    B = {i["candidate"]: i for i in fe_items if i["key"] == b}
    both = [c for c in A if c in B]
    if not both:
        return dict(metrics.EMPTY)
    return metrics.first_error_f1_ci(
        [A[c]["pred"] for c in both],
        [A[c]["true"] for c in both],
        [A[c]["content"] for c in both],
        seed=seed,
        pred_b=[B[c]["pred"] for c in both],
        adjusted=adjusted_level(),
    )


def step_tables(fe_items, auc_items, seed):
    """First-error F1 and fresh-step AUC per score key, each with its bootstrap interval (clusters: content)."""
    step, fresh = {}, {}
    for key in dict.fromkeys(i["key"] for i in fe_items):
        it = [i for i in fe_items if i["key"] == key]
        r = metrics.first_error_f1_ci(
            [i["pred"] for i in it], [i["true"] for i in it], [i["content"] for i in it], seed=seed
        )
        step[key] = {
            "first_error_f1": round(r["mean"], 4),
            "lo": r["lo"],
            "hi": r["hi"],
            "n": r["n"],
            "clusters": r["clusters"],
            "threshold": it[0]["threshold"],
            "acc_error": r["acc_error"],
            "acc_correct": r["acc_correct"],
        }
    for key in dict.fromkeys(i["key"] for i in auc_items):
        fresh[key] = {}
        for kind in sorted({i["kind"] for i in auc_items if i["key"] == key}):
            it = [i for i in auc_items if i["key"] == key and i["kind"] == kind]
            fresh[key][kind] = metrics.auc_ci(
                [i["score"] for i in it], [i["label"] for i in it], [i["content"] for i in it], seed=seed
            )
    return step, fresh


def results_from(a, rows, fe_items, auc_items, head, seed, more=None, judges=None):
    """Every table, comparison and verdict from the per-problem rows and step items (one seed, or pooled seeds);
    `more`: comparisons made elsewhere (the step search's) that findings read too; judges: the judge table's
    choice made on dev ({"names", "best": (judge, mode), "solver_pair", "dev"})."""
    ix, rules = index(rows), method_sets(head, (judges or {}).get("names", ()))
    iv = {
        pool: table(
            ix,
            pool,
            list(rules[pool]),
            [n for n in bon.NS if pool[:4] != "half" or n <= a.pool // 2],
            seed=seed,
        )
        for pool in rules
        if any(k[0] == pool for k in ix)  # a run without a pool (no stronger policy) has no table for it
    }

    def mean(pool, part, methods=None):  # the table's means alone: {method: {"N": mean}}
        return {
            m: {n: c["mean"] for n, c in cells.items()}
            for m, cells in iv[pool][part].items()
            if methods is None or m in methods
        }

    b = {
        part: mean("synthetic", part)
        for part in PARTS
    }
    half = {r["problem"]: r for r in rows if r["pool"] == "half_a"}
    ha = {(r["problem"], r["method"]): r["acc"] for r in rows if r["pool"] == "half_a"}
    top = str(min(8, a.pool // 2))
    kept = sorted(bon.prefers_prm({p: ha[(p, "prm_head")][top] - ha[(p, "orm")][top] for p in half}))
    comps = {**with_f1(comparisons(ix, 16, kept, seed, judges), fe_items, seed), **(more or {})}
    step, fresh = step_tables(fe_items, auc_items, seed)

    def gain_at_16(part, method):  # over one random sample
        return round(b[part][method]["16"] - b[part]["random"]["1"], 4)

    return {
        "bon": b,
        "bon_base_policy": {p: mean("base", p) for p in PARTS},
        **({"judges": {**judges, "bon": {p: mean("judges", p) for p in PARTS}}}
           if judges and "judges" in iv else {}),
        "bon_strong_policy": {p: mean("strong", p) for p in PARTS if "strong" in iv},
        "intervals": iv,
        "head": head,
        "faithful": {pool: {p: mean(f"{pool}_faithful", p) for p in PARTS}
                     for pool in ("base", "strong", "synthetic") if f"{pool}_faithful" in iv},
        "hybrid": mean(
            "synthetic", "all", ("prm_min", "prm_mean", "prm_last", "prm_last2", "prm_last3", "orm")
        ),
        "step": step,
        "controls": {
            "fresh_auc": {
                ("orm_steps" if k == "orm" else k): {kind: v["mean"] for kind, v in d.items()}
                for k, d in fresh.items()
            },
            "fresh_auc_ci": fresh,
            "bon": {
                k: b["all"][f"{k}_min"] for k in ("prm", "prm_blank", "prior", "base_likelihood", "orm_steps")
            },
        },
        "segmentation": mean(
            "synthetic", "all", list(segmentation_rules(head)) + ["key_weighted", "equal_weights"]
        ),
        "cross_domain": {
            p: mean("synthetic", p, ("prm_head", "prm_visual_head", "prm_text_head")) for p in PARTS
        },
        "gain_over_one_sample": {
            f: {
                m: gain_at_16(f, m)
                for m in ("majority", "weighted_prm", "orm", "prm_min", "prm_mean", "prm_head", "oracle")
            }
            for f in ("text", "visual")
        },
        "filter": {"kept": len(kept), "of": len(half), "kept_ids": kept},
        "comparisons": comps,
        "verdicts": verdicts(comps),
        "resolvable": resolvable(comps),
        "evidence_rule": {
            "level": metrics.LEVEL,
            "adjusted_level": adjusted_level(),
            "adjusted_for": len(finding_comparisons()),
            "min_clusters": metrics.MIN_CLUSTERS,
        },
    }


def said(c):
    """A difference as the command line prints it: "+0.0123 [-0.0100, +0.0400]", or its mean and "too few"."""
    if c.get("lo") is None:
        return f"{c['mean']:+.4f} ({'too few clusters' if c.get('too_few') else 'no interval'})"
    return f"{c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def read_rows(path):
    """The rows of a JSONL file (common.data.read_jsonl: a bad line names file and line), each with its "line"."""
    rows = []
    for n, row in data.read_jsonl(path, lines=True):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object")
        rows.append({**row, "line": n})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument(
        "rows", help="per_problem.jsonl written by bench.py (its per_step.jsonl beside it: the F1 rows)"
    )
    ap.add_argument("--a", help="method a (with --b: one paired comparison a - b)")
    ap.add_argument("--b", help="method b")
    ap.add_argument("--b-rows", default="", help="read b from another run's per_problem.jsonl (the same seed's "
                    "test problems): e.g. the PRM on other labels, --a prm_head --b prm_head")
    ap.add_argument(
        "--pool",
        default="base",
        help="base (the headline: the base's own answers) | synthetic | " "strong | judges | half_a | half_b",
    )
    ap.add_argument("--n", type=cli.within(int, 1), default=16, help="N of Best-of-N")
    ap.add_argument("--part", default="all", choices=PARTS, help="problems: all | visual | text")
    a = ap.parse_args(argv)
    rows = read_rows(a.rows)
    meta = next((r for r in rows if r.get("pool") == "meta"), {})
    ix = index([r for r in rows if r.get("pool") != "meta"])
    seed = meta.get(
        "seed", 0
    )  # the run's bootstrap seed and least sample: the same intervals as its results.json
    metrics.MIN_CLUSTERS = meta.get("min_clusters") or metrics.MIN_CLUSTERS
    if a.a and a.b:
        ix_b = index([r for r in read_rows(a.b_rows) if r.get("pool") != "meta"]) if a.b_rows else ix
        pools = sorted({pool for pool, _ in ix})
        cli.choice(a.pool, pools, "--pool")
        for flag, method, rows_of in (("--a", a.a, ix), ("--b", a.b, ix_b)):  # a misspelt method compares nothing
            cli.choice(method, sorted({m for pool, m in rows_of if pool == a.pool}), f"{flag} (pool {a.pool})")
        c = compare(ix, a.pool, a.a, a.b, a.n, a.part, seed=seed, ix_b=ix_b)
        other = f" (b from {a.b_rows})" if a.b_rows else ""
        print(
            f"{a.a} - {a.b}{other} at N={a.n} ({a.pool}, {a.part}, {c['n']} problems): {said(c)} "
            f"-> {metrics.verdict(c)}"
        )
        return c
    steps = Path(a.rows).with_name("per_step.jsonl")
    fe = [r for r in read_rows(steps) if r.get("metric") == "first_error"] if steps.exists() else []
    comps = with_f1(comparisons(ix, a.n, meta.get("kept"), seed, meta.get("judges")), fe, seed)
    for k, c in comps.items():
        print(
            f"{k:38s} {said(c)}  n={c['n']}  {metrics.verdict(c)} (adjusted: {metrics.verdict(c, adjusted=True)})"
        )
    for v in verdicts(comps):
        print(f"{v['verdict']:>13s} (adjusted: {v['verdict_adjusted']})  {v['finding']}")
    print(f"smallest resolvable paired difference (median half-width): {resolvable(comps)}")
    return comps


if __name__ == "__main__":
    cli.run(main)
