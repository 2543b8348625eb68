"""bench.py's results as a person reads them: report.md's tables (every number with its 95% interval), the
accuracy-vs-N plot with interval bands, and the README's results block (between the bench markers). Rendering
only: every number comes from results.json.
"""
import json
import os
import platform
import shutil
import statistics
from pathlib import Path

import torch

import data
from metrics import verdict

ROOT = Path(__file__).resolve().parent

NS = ("1", "2", "4", "8", "16")
MAIN = ["random", "majority", "weighted_prm", "orm", "prm_head", "prm_min", "prm_mean", "prm_prod", "prm_last",
        "prm_last2", "oracle"]
COMPARISONS = {  # name: what it reads (a - b, paired over test problems at N=16)
    "prm_vs_orm": "PRM vs ORM", "prm_vs_orm_visual": "PRM vs ORM, visual items", "prm_vs_orm_text":
    "PRM vs ORM, text items", "prm_vs_majority": "PRM vs majority vote", "prm_vs_base_likelihood":
    "PRM vs the base's own step likelihood", "weighted_vs_majority": "PRM-weighted vote vs majority",
    "last2_vs_min": "hybrid last-2 vs min", "last2_vs_mean": "hybrid last-2 vs mean", "last2_vs_orm":
    "hybrid last-2 vs ORM", "text_gain_vs_visual_gain": "PRM's gain over one sample: text minus visual",
    "steps_vs_chunks": "writer's steps vs 24-character chunks", "steps_vs_pairs": "writer's steps vs pairs of steps",
    "steps_vs_split": "writer's steps vs split_steps of the text",
    "chunks_hurt_visual_more": "loss from chunking: visual minus text", "key_vs_equal":
    "key-step weights vs equal weights (mean)", "prm_vs_judge_prm": "PRM vs the judge PRM (judged subset)",
    "filtered_prm_vs_orm": "PRM vs ORM on ViLBench-filtered items (half B)", "unfiltered_prm_vs_orm":
    "PRM vs ORM on the other items (half B)", "mixed_vs_visual_only_on_text":
    "PRM on both families vs on visual labels only, text items", "mixed_vs_text_only_on_visual":
    "PRM on both families vs on text labels only, visual items", "visual_only_vs_text_only_on_visual":
    "visual-only PRM vs text-only PRM, visual items", "text_only_vs_visual_only_on_text":
    "text-only PRM vs visual-only PRM, text items",
    "headline_prm_vs_majority": "headline (base's answers): PRM vs majority vote",
    "headline_prm_vs_orm": "headline (base's answers): PRM vs ORM",
    "headline_prm_vs_base_likelihood": "headline (base's answers): PRM vs the base's own step likelihood (min)",
    "headline_weighted_vs_majority": "headline (base's answers): PRM-weighted vote vs majority",
    "headline_f1_prm_vs_orm": "headline (base's answers): first-error F1, PRM vs ORM",
    "headline_f1_prm_vs_base_likelihood": "headline (base's answers): first-error F1, PRM vs the base's likelihood"}
HEADLINE = ["random", "majority", "weighted_prm", "orm", "base_likelihood_min", "prm_head", "oracle"]


FILTER = {"kept": "filtered_prm_vs_orm", "the rest": "unfiltered_prm_vs_orm"}


def f3(x):
    return "-" if x is None else f"{x:.3f}"


def ci(c, sign=False):
    """'0.850 [0.801, 0.893]' from {"mean", "lo", "hi"}."""
    if not c or c.get("mean") is None:
        return "-"
    f = (lambda x: f"{x:+.3f}") if sign else f3
    return f"{f(c['mean'])} [{f(c['lo'])}, {f(c['hi'])}]"


def md(rows, cols, cell, corner=""):
    lines = [f"| {corner} | " + " | ".join(map(str, cols)) + " |", "|---|" + "---:|" * len(cols)]
    return "\n".join(lines + [f"| {r} | " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows])


CURVES = {"oracle": "oracle (any right)", "weighted_prm": "PRM-weighted vote", "prm_head": "PRM argmax",
          "base_likelihood_min": "base's own step likelihood (min)", "orm": "ORM", "judge_prm": "judge PRM (rubric)",
          "judge_orm": "judge ORM (rubric)", "majority": "majority vote", "random": "one sample"}


def settings(a):
    """The run's settings as the plot's title states them (a: bench.Args), two lines."""
    seed = f"seeds {a.seeds} pooled" if a.seeds else f"seed {a.seed}"
    return (f"{'QUICK smoke run (numbers not evidence): ' if a.quick else ''}{seed}, {a.n_test} test problems"
            f"{' per seed' if a.seeds else ''}, {a.pool} answers each\nPRM and ORM: {a.head} head, {a.steps} steps "
            f"from {a.base} on {a.labels} labels of {a.n_train} train problems ({a.label_policy} policy)")


def figure(cells, a=None, head=None):
    """The accuracy-vs-N figure (a matplotlib Figure): one line per method with its 95% band; a curve measured on
    fewer problems than the run's test problems (the judges' subset, bench --judge-n) says so in its legend label."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9.5, 5))
    ax = fig.add_subplot()
    drawn = [m for m in CURVES if m in cells]
    runs = len(a.seeds.split(",")) if a and a.seeds else 1  # --seeds pools every seed's test problems
    full = max([c.get("n") or 0 for m in drawn for c in cells[m].values()] + [a.n_test * runs if a else 0])
    for m in drawn:
        ns = [n for n in NS if n in cells[m] and cells[m][n]["mean"] is not None]
        x, k = [int(n) for n in ns], max(cells[m][n].get("n") or full for n in ns)
        label = CURVES[m] + (f" (aggregation: {head})" if m == "prm_head" and head else "") + (
            f" ({k}-problem subset)" if k < full else "")
        colour = f"C{list(CURVES).index(m)}"  # one colour per method in every run's plot
        ax.plot(x, [cells[m][n]["mean"] for n in ns], marker="o", label=label, color=colour,
                linestyle="--" if m in ("oracle", "random") else "-")
        ax.fill_between(x, [cells[m][n]["lo"] for n in ns], [cells[m][n]["hi"] for n in ns], alpha=0.1, color=colour)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
    ax.minorticks_off()
    ax.set_xlabel("N (candidates the reward model chooses from)")
    ax.set_ylabel("accuracy of the chosen answer")
    fig.suptitle("Best-of-N on the tiny base's own answers (bands: 95% bootstrap intervals over test problems)"
                 + (f"\n{settings(a)}" if a else ""), x=0.01, ha="left", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="who picks the answer",
              title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot(cells, path, a=None, head=None):
    """Accuracy vs N (the headline pool: the tiny base's own answers, all test problems) written to path."""
    try:
        fig = figure(cells, a, head)
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig.savefig(path, dpi=120)
    return str(path)


def verdict_table(r):
    comps = r["comparisons"]
    rows = [(v["finding"], v) for v in r["verdicts"]]
    return md([f for f, _ in rows], ["comparison (a - b at N=16)", "difference [95% CI]", "verdict"],
              lambda f, c: {"comparison (a - b at N=16)": "; ".join(COMPARISONS.get(k, k) for k in dict(rows)[f]["comparisons"]),
                            "difference [95% CI]": "; ".join(ci(comps.get(k), True) for k in dict(rows)[f]["comparisons"]),
                            "verdict": f"**{dict(rows)[f]['verdict']}**"}[c], "finding of the paper")


def comparison_table(r):
    comps = r["comparisons"]
    names = {COMPARISONS[k]: k for k in COMPARISONS if k in comps}
    return md(list(names), ["difference [95% CI]", "problems", "a > b?"],
              lambda n, c: {"difference [95% CI]": ci(comps[names[n]], True), "problems": str(comps[names[n]]["n"]),
                            "a > b?": {"holds": "yes", "opposite": "no, b > a", "not resolved": "not resolved"}[
                                verdict(comps[names[n]])]}[c], "comparison (a - b, N=16, paired)")


def machine():
    """Where bench ran, in words: the GPU (if any), the CPU cores, torch."""
    gpu = f"1 GPU ({torch.cuda.get_device_name()}) and " if torch.cuda.is_available() else ""
    return (f"{gpu}{os.cpu_count()} CPU cores ({platform.machine()}, torch {torch.__version__}"
            f"{'' if gpu else ', no GPU'})")


def report(r, a, curve):
    iv, head, tun = r["intervals"], r["head"], r["tuning"]
    seeds = f" --seeds {a.seeds}" if a.seeds else f" --seed {a.seed}"
    t = [f"# Bench report\n\n`python bench.py{' --quick' if a.quick else ''}{seeds}`: {r['seconds']:.0f} s on "
         f"{r.get('machine') or machine()} (every stage; this run {r['seconds_this_run']:.0f} s). Test: {a.n_test} problems"
         f"{' per seed' if a.seeds else ''} (content-disjoint from train, tune and dev), pools of {a.pool} "
         f"({a.pool // 2} weak + {a.pool // 2} strong synthetic samples); reward models ({a.head} head, beta "
         f"{a.beta}) fine-tuned {a.steps} steps from `{a.base}` on {a.labels} labels of {a.n_train} train problems. "
         f"Chosen on the tune split ({a.n_tune} problems): the PRM's aggregation **{head}** (Best-of-16 on tune: "
         + ", ".join(f"{g} {v:.3f}" for g, v in tun["aggregation"].items()) + f"); tau {tun['tau']['tau']}. "
         f"Every interval: 95% bootstrap over test problems (clusters of shared content), paired for differences. "
         f"The smallest paired difference this run resolves (median half-width): **{r['resolvable']}**.\n"]
    if r.get("seeds"):
        sp = r["seeds"]["spread"]
        t.append("## Seeds: each seed's headline numbers, mean and spread (std)\n\n" +
                 md(list(sp), ["mean", "std"] + [f"seed {s}" for s in r["seeds"]["per_seed"]],
                    lambda k, c: f3(sp[k][c]) if c in ("mean", "std") else
                    f3(r["seeds"]["per_seed"][c.split()[1]].get(k))) + "\n")
    t.append("## (0) The paper's findings: verdicts\n\n" + verdict_table(r) + "\n")
    t.append("## (1) Paired comparisons\n\n" + comparison_table(r) + "\n")
    b = iv["base"]
    t.append(f"## (2a) Headline: Best-of-N on the tiny base's own answers (a policy exactly as strong as the reward "
             f"models' base; prm_head = prm_{head})\n\n" +
             md([m for m in HEADLINE if m in b["all"]], ["1", "4", "16 [95% CI]", "visual 16", "text 16"],
                lambda m, n: ci(b["all"][m]["16"]) if n.startswith("16") else f3(b[n.split()[0]][m]["16"]["mean"])
                if " " in n else f3(b["all"][m][n]["mean"])) + "\n")
    for part in ("all", "visual", "text"):
        cells = iv["synthetic"][part]
        t.append(f"## (2) Best-of-N on the synthetic pools (a policy weaker than the base), {part} "
                 f"(prm_head = prm_{head})\n\n" +
                 md([m for m in MAIN if m in cells], ["1", "2", "4", "8", "16 [95% CI]"],
                    lambda m, n: ci(cells[m]["16"]) if n.startswith("16") else f3(cells[m][n]["mean"])) + "\n")
    t.append(f"Plot: {curve}. Majority and weighted vote at N=8 are Monte-Carlo (1000 subsets a problem; error "
             f"{max(c['8'].get('mc_se') or 0 for c in iv['synthetic']['all'].values()):.4f}); every other cell is exact.\n")
    hy = ["orm", "prm_min", "prm_mean", "prm_last", "prm_last2", "prm_last3"]
    t.append("## (3) Hybrid: score only the last k steps\n\n" +
             md(hy, ["N=4", "N=16 [95% CI]"], lambda m, n: ci(iv["synthetic"]["all"][m]["16"]) if "16" in n
                else f3(iv["synthetic"]["all"][m]["4"]["mean"])) + "\n")
    g = r["gain_over_one_sample"]
    t.append("## (4) Gain over one sample at N=16, text vs visual\n\n" +
             md(list(g["text"]), ["text", "visual"], lambda m, f: f"{g[f][m]:+.3f}") + "\n")
    lab = r["labelling"]
    t.append("## (5) Labelling: tau chosen on tune, cost and quality on test problems against the oracle\n\n" +
             md([m for m in ("mc", "mcts") if m in lab], ["rollouts_per_solution", "first_error_agreement",
                                                         "step_label_accuracy"], lambda m, c: str(lab[m][c])) +
             f"\n\nTau grid on tune ({a.labels}, first-error agreement): " +
             ", ".join(f"{k}: {v['first_error_agreement']}" for k, v in tun["tau"].get("grid", {}).items()) +
             f". Train labels: {lab['train_labels']['records']} records, "
             f"{lab['train_labels']['rollouts_per_solution']} rollouts per solution.\n")
    st = r["step"]
    t.append("## (6) First-error F1 (ProcessBench), threshold from dev\n\n" +
             md(list(st), ["F1 [95% CI]", "threshold", "acc_error", "acc_correct", "solutions"],
                lambda k, c: {"F1 [95% CI]": ci({"mean": st[k]["first_error_f1"], **st[k]}),
                              "threshold": f"{st[k]['threshold']:.2f}", "acc_error": f3(st[k]["acc_error"]),
                              "acc_correct": f3(st[k]["acc_correct"]), "solutions": str(st[k]["n"])}[c]) + "\n")
    fa = r["controls"]["fresh_auc_ci"]
    kinds = sorted({k for v in fa.values() for k in v})
    t.append("## (7) Controls: fresh-step AUC per kind [95% CI]\n\n" +
             md(list(fa), kinds, lambda m, k: ci(fa[m].get(k))) + "\n")
    sg = iv["synthetic"]["all"]
    segs = [m for m in [f"{n}_{g}" for g in ("head", "min", "mean") for n in ("steps", "chunks", "pairs", "split")]
            + ["key_weighted", "equal_weights"] if m in sg]
    t.append("## (8) Step segmentation (same answers, four cuts) and key-step weighting\n\n" +
             md(segs, ["N=4", "N=16 [95% CI]"], lambda m, n: ci(sg[m]["16"]) if "16" in n else f3(sg[m]["4"]["mean"]))
             + "\n")
    fl = r["filter"]
    t.append(f"## (9) The ViLBench filter\n\nKept on half A of each pool (PRM minus ORM at N=8 > 0): {fl['kept']} of "
             f"{fl['of']} test problems; measured on half B (the other 8 candidates):\n\n" +
             md([k for k in ("kept", "the rest") if FILTER[k] in r["comparisons"]], ["PRM - ORM [95% CI]", "problems"],
                lambda k, c: ci(r["comparisons"][FILTER[k]], True) if c[0] == "P"
                else str(r["comparisons"][FILTER[k]]["n"]), "items (half B)") + "\n")
    cd = iv["synthetic"]
    t.append("## (10) Cross-domain: PRMs trained on one family's labels (same steps), Best-of-16 [95% CI]\n\n" +
             md([m for m in ("prm_head", "prm_visual_head", "prm_text_head") if m in cd["all"]],
                ["all", "visual items", "text items"], lambda m, p: ci(cd[p.split()[0]][m]["16"])) + "\n")
    j = iv["judged"]["all"]
    t.append(f"## (11) Judges (the base prompted with the rubric) on {a.judge_n} test problems\n\n" +
             md(list(j), ["1", "4", "16 [95% CI]"], lambda m, n: ci(j[m]["16"]) if n.startswith("16")
                else f3(j[m][n]["mean"])) + "\n")
    s = r["speed"]
    t.append(f"## (12) Speed (CPU, {s['answers']} answers, {s['steps']} steps)\n\nsingle pass {s['single_pass_s']} s, "
             f"each prefix separately {s['per_prefix_s']} s: {s['slowdown']}x slower."
             + (" Rollouts per second from the base served by serve.py (api.py), by requests in flight: "
                + ", ".join(f"{k}: {v}" for k, v in s["served_rollouts_per_s"].items()) + "."
                if s.get("served_rollouts_per_s") else "") + "\n")
    return "\n".join(t)


def update_readme(r, a, path=ROOT / "README.md"):
    """Replace the README's results block (between the bench markers) with this run's verdicts and headline tables."""
    iv, base = r["intervals"]["synthetic"], r["intervals"]["base"]
    rows = [m for m in ("random", "majority", "weighted_prm", "orm", "prm_head", "oracle") if m in iv["all"]]
    cols = ["all N=1", "all N=4", "all N=16", "visual N=16", "text N=16"]
    cell = lambda t: lambda m, c: (ci(t[c.split()[0]][m][c.split("=")[1]]) if c.endswith("16")  # noqa: E731
                                   else f3(t[c.split()[0]][m][c.split("=")[1]]["mean"]))
    block = [f"`python bench.py{' --quick' if a.quick else ''}{f' --seeds {a.seeds}' if a.seeds else ''}` "
             f"(seed {a.seeds or a.seed}): {r['seconds'] / 60:.1f} minutes on "
             f"{r.get('machine') or machine()}. Test: {a.n_test} problems (content-disjoint "
             f"from train, tune and dev). Headline pools: {a.pool} answers per problem sampled from the tiny base "
             f"(temperature {a.temperature}); PRM and ORM ({a.head} head) fine-tuned {a.steps} steps from the same "
             f"base on {a.labels} labels of {a.n_train} train problems ({a.label_policy} policy: its own answers and "
             f"rollouts); the PRM's aggregation (**{r['head']}**) and tau ({r['tuning']['tau']['tau']}) chosen on "
             f"the tune split. Intervals: 95% bootstrap over test problems; differences paired. Smallest resolvable "
             f"paired difference: **{r['resolvable']}**. Full tables: `results/report.md`.\n",
             "The paper's findings:\n", verdict_table(r), "",
             "Headline: Best-of-N on the tiny base's own answers (exact expectation over all N-subsets of the pool of "
             f"16; prm_head is the PRM's argmax with {r['head']}; base_likelihood_min is the untrained base's own step "
             "likelihood):\n",
             md([m for m in HEADLINE if m in base["all"]], cols, cell(base)), "",
             "The synthetic pools (half weak, half strong sampler: a policy weaker than the base):\n",
             md(rows, cols, cell(iv)), "",
             "First-error F1 (ProcessBench; threshold from dev) [95% CI] (@base: on the base's own answers):\n",
             md(list(r["step"]), ["F1"], lambda k, c: ci({"mean": r["step"][k]["first_error_f1"], **r["step"][k]})),
             ""]
    text = path.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path}: no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + "\n".join(block) + "\n" + end + rest.split(end, 1)[1])


def spread(heads):
    """Each headline number over seeds: mean and sample standard deviation."""
    return {k: {"mean": round(statistics.mean(v), 4), "std": round(statistics.stdev(v) if len(v) > 1 else 0.0, 4)}
            for k in heads[0] if isinstance(heads[0][k], (int, float)) for v in [[h[k] for h in heads]]}


def headline(res):
    """The last stdout line: the headline numbers (the base's own answers; syn_: the synthetic pools) as one JSON
    object."""
    b, s, step = res["bon_base_policy"]["all"], res["bon"]["all"], res["step"]
    f1 = lambda k: step.get(k, {}).get("first_error_f1")  # noqa: E731
    return {"seconds": res["seconds"], "head": res["head"],
            **{f"{m}@16": round(b[m]["16"], 4) for m in ("prm_head", "weighted_prm", "orm", "majority",
                                                         "base_likelihood_min", "oracle")},
            "random@1": round(b["random"]["1"], 4), "prm_f1": f1("prm@base"), "orm_f1": f1("orm@base"),
            "base_likelihood_f1": f1("base_likelihood@base"),
            **{f"syn_{m}@16": round(s[m]["16"], 4) for m in ("prm_head", "weighted_prm", "orm", "majority")},
            "syn_prm_f1": f1("prm"), "verdicts": {v["finding"]: v["verdict"] for v in res["verdicts"]},
            "resolvable": res["resolvable"]}


def write_outputs(res, rows, fe_items, auc_items, a, out):
    """results.json, per_problem.jsonl, per_step.jsonl, the plot, report.md (printed); --readme: README and results/."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    meta = {"pool": "meta", "head": res["head"], "kept": res["filter"]["kept_ids"], "seed": a.seed}
    data.write_jsonl(out / "per_problem.jsonl", [meta] + rows)
    data.write_jsonl(out / "per_step.jsonl", [{"metric": "first_error", **i} for i in fe_items] +
                     [{"metric": "fresh_auc", **i} for i in auc_items])
    text = report(res, a, plot(res["intervals"]["base"]["all"], out / "bon_curve.png", a,
                                         "tuned per seed" if res.get("seeds") else res["head"]))
    (out / "report.md").write_text(text)
    print(text)
    if a.readme:
        update_readme(res, a)
        (ROOT / "results").mkdir(exist_ok=True)
        for f in ("results.json", "report.md", "bon_curve.png"):
            shutil.copy(out / f, ROOT / "results" / f)
