"""bench.py's results as a person reads them: report.md's tables (every number with its 95%
interval), the accuracy-vs-N plot with interval bands, and the README's results block (between
the bench markers). Rendering only: every number comes from results.json.

    python -m lab.report --diff results/results.json out/bench/results.json   # two runs' numbers, timings aside
"""
import argparse
import json
import os
import platform
import shutil
import statistics
from pathlib import Path

import torch

import search
from common import data
from common.metrics import verdict

ROOT = Path(__file__).resolve().parents[1]  # the repository

# -----------------------------------------------------------------------------
# what the tables list, in the order they list it

NS = ("1", "2", "4", "8", "16")  # the N of Best-of-N, as results.json's keys

# the synthetic pools' rows: these, with the PRM under every aggregation tried on tune between prm_head and oracle
MAIN = ["random", "majority", "weighted_prm", "orm", "prm_head", "prm_min", "prm_mean",
        "prm_prod", "prm_last", "prm_last2", "oracle"]


def main_rows(r):
    """MAIN, and a PRM row for any aggregation the run tried that MAIN does not list (bon.AGGREGATIONS)."""
    tried = [f"prm_{agg}" for agg in r.get("tuning", {}).get("aggregation", {})]
    return MAIN[:-1] + [m for m in tried if m not in MAIN] + MAIN[-1:]

# the headline's rows (the base's own answers)
HEADLINE = ["random", "majority", "weighted_prm", "orm", "base_likelihood_min", "prm_head",
            "oracle"]

# each paired comparison as its row reads it: a - b, paired over test problems at N=16
COMPARISONS = {
    "prm_vs_orm": "PRM vs ORM",
    "prm_vs_orm_visual": "PRM vs ORM, visual items",
    "prm_vs_orm_text": "PRM vs ORM, text items",
    "prm_vs_majority": "PRM vs majority vote",
    "prm_vs_base_likelihood": "PRM vs the base's own step likelihood",
    "weighted_vs_majority": "PRM-weighted vote vs majority",
    "last2_vs_min": "hybrid last-2 vs min",
    "last2_vs_mean": "hybrid last-2 vs mean",
    "last2_vs_orm": "hybrid last-2 vs ORM",
    "text_gain_vs_visual_gain": "PRM's gain over one sample: text minus visual",
    "steps_vs_chunks": "writer's steps vs 24-character chunks",
    "steps_vs_pairs": "writer's steps vs pairs of steps",
    "steps_vs_split": "writer's steps vs split_steps of the text",
    "chunks_hurt_visual_more": "loss from chunking: visual minus text",
    "key_vs_equal": "key-step weights vs equal weights (mean)",
    "filtered_prm_vs_orm": "PRM vs ORM on ViLBench-filtered items (half B)",
    "unfiltered_prm_vs_orm": "PRM vs ORM on the other items (half B)",
    "mixed_vs_visual_only_on_text":
        "PRM on both families vs on visual labels only, text items",
    "mixed_vs_text_only_on_visual":
        "PRM on both families vs on text labels only, visual items",
    "visual_only_vs_text_only_on_visual": "visual-only PRM vs text-only PRM, visual items",
    "text_only_vs_visual_only_on_text": "text-only PRM vs visual-only PRM, text items",
    "headline_prm_vs_majority": "headline (base's answers): PRM vs majority vote",
    "headline_prm_vs_orm": "headline (base's answers): PRM vs ORM",
    "headline_prm_vs_base_likelihood":
        "headline (base's answers): PRM vs the base's own step likelihood (min)",
    "headline_weighted_vs_majority":
        "headline (base's answers): PRM-weighted vote vs majority",
    "headline_f1_prm_vs_orm": "headline (base's answers): first-error F1, PRM vs ORM",
    "headline_f1_prm_vs_base_likelihood":
        "headline (base's answers): first-error F1, PRM vs the base's likelihood",
    "headline_f1_prm_vs_content_free":
        "headline (base's answers): first-error F1, PRM vs the content-free rule",
    "faithful_prm_vs_orm": "faithful@16 (base's answers): PRM vs ORM",
    "faithful_prm_vs_base_likelihood": "faithful@16 (base's answers): PRM vs the base's own step likelihood (min)",
    "faithful_prm_vs_majority": "faithful@16 (base's answers): PRM vs majority vote",
    "synthetic_faithful_prm_vs_orm": "faithful@16 (synthetic pools): PRM vs ORM",
    "strong_prm_vs_majority": "stronger policy's answers: PRM vs majority vote",
    "strong_prm_vs_orm": "stronger policy's answers: PRM vs ORM",
    "strong_prm_vs_base_likelihood": "stronger policy's answers: PRM vs the base's own step likelihood (min)",
    "strong_weighted_vs_majority": "stronger policy's answers: PRM-weighted vote vs majority",
    "strong_f1_prm_vs_orm": "stronger policy's answers: first-error F1, PRM vs ORM",
    "strong_f1_prm_vs_base_likelihood": "stronger policy's answers: first-error F1, PRM vs the base's likelihood",
    "strong_f1_prm_vs_content_free": "stronger policy's answers: first-error F1, PRM vs the content-free rule",
    "strong_faithful_prm_vs_orm": "faithful@16 (stronger policy's answers): PRM vs ORM",
    "strong_faithful_prm_vs_base_likelihood":
        "faithful@16 (stronger policy's answers): PRM vs the base's own step likelihood (min)",
    "search_prm_vs_orm": "step search (b=2, base's steps): PRM-guided vs ORM-guided",
    "judges_prm_vs_orm_visual": "the best judge (dev): PRM mode vs ORM mode, visual items",
    "judges_prm_vs_orm_text": "the best judge (dev): PRM mode vs ORM mode, text items",
    "judges_hybrid_vs_prm": "the best judge (dev): hybrid last-2 vs PRM mode",
    "judges_hybrid_vs_orm": "the best judge (dev): hybrid last-2 vs ORM mode",
    "judges_text_gain_vs_visual_gain": "the best judge's gain over one sample: text minus visual",
    "prm_vs_best_judge": "trained PRM vs the best judge (dev's choice of judge and mode)",
    "judge_weaker_vs_stronger_solver": "judge made from the base vs from the stronger solver (same rating training)",
    "search_prm_vs_best_of_n": "step search (b=2): PRM-guided vs the PRM's Best-of-N at equal tokens",
}

# the ViLBench filter's two groups of items, and the comparison measured on each
FILTER = {"kept": "filtered_prm_vs_orm", "the rest": "unfiltered_prm_vs_orm"}

# the plot's curves and their legend labels; the order fixes each method's colour
CURVES = {
    "oracle": "oracle (any right)",
    "weighted_prm": "PRM-weighted vote",
    "prm_head": "PRM argmax",
    "base_likelihood_min": "base's own step likelihood (min)",
    "orm": "ORM",
    "majority": "majority vote",
    "random": "one sample",
}

# metrics.verdict's word for a paired difference, as the answer to "a > b?"
A_AHEAD = {"holds": "yes", "opposite": "no, b > a", "not resolved": "not resolved", "too few": "too few"}

# -----------------------------------------------------------------------------
# numbers and tables as text


def f3(x):
    return "-" if x is None else f"{x:.3f}"


def f3_signed(x):
    """A difference, its sign always written: +0.050, -0.020."""
    return f"{x:+.3f}"


def ci(c, sign=False):
    """'0.850 [0.801, 0.893]' from {"mean", "lo", "hi"}; with sign (for a difference):
    '+0.050 [+0.010, +0.090]'."""
    if not c or c.get("mean") is None:
        return "-"
    fmt = f3_signed if sign else f3
    if c.get("lo") is None:  # too few contents for an interval: the mean alone, said so
        return f"{fmt(c['mean'])} (too few" + (f" contents: {c['clusters']})" if "clusters" in c else ")")
    return f"{fmt(c['mean'])} [{fmt(c['lo'])}, {fmt(c['hi'])}]"


def adjusted_ci(c):
    """The multiplicity-adjusted interval of a difference: '[-0.120, +0.030]', or "-"."""
    if not c or c.get("lo_adj") is None:
        return "-"
    return f"[{f3_signed(c['lo_adj'])}, {f3_signed(c['hi_adj'])}]"


def md(rows, cols, cell, corner=""):
    """A markdown table: one line per row, its name first, then cell(row, col) per column."""
    header = f"| {corner} | " + " | ".join(map(str, cols)) + " |"
    align = "|---|" + "---:|" * len(cols)  # numbers right-aligned
    lines = [f"| {row} | " + " | ".join(cell(row, col) for col in cols) + " |" for row in rows]
    return "\n".join([header, align] + lines)


def bon_cell(cells, method, column):
    """One Best-of-N cell. The column names N ("4" or "N=4"); a column marked "[95% CI]"
    shows the interval too."""
    n = column.removeprefix("N=").split()[0]
    if column.endswith("[95% CI]"):
        return ci(cells[method][n])
    return f3(cells[method][n]["mean"])


def bon_table(cells, rows, cols):
    return md(rows, cols, lambda method, column: bon_cell(cells, method, column))


def f1_ci(scores):
    """First-error F1 with its interval, from one method's entry in results["step"]."""
    return ci({"mean": scores["first_error_f1"], **scores})


def section(title, body):
    return f"## {title}\n\n{body}\n"


# -----------------------------------------------------------------------------
# the plot


def settings(a):
    """The run's settings as the plot's title states them (a: bench.Args), two lines."""
    quick = "QUICK smoke run (numbers not evidence): " if a.quick else ""
    seed = f"seeds {a.seeds} pooled" if a.seeds else f"seed {a.seed}"
    per_seed = " per seed" if a.seeds else ""
    return (f"{quick}{seed}, {a.n_test} test problems{per_seed}, {a.pool} answers each\n"
            f"PRM and ORM: {a.head} head, {a.steps} steps from {a.base} on {a.labels} labels "
            f"of {a.n_train} train problems ({a.label_policy} policy)")


def nan_if_none(x):
    return float("nan") if x is None else x


def figure(cells, a=None, head=None):
    """The accuracy-vs-N figure (a matplotlib Figure): one line per method with its 95% band.
    A curve measured on fewer problems than the run's test problems (the judges' subset,
    bench --judge-n) says so in its legend label."""
    # imported here so that, without matplotlib, plot() can say so instead of failing
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 5))
    ax = fig.add_subplot()
    drawn = [m for m in CURVES if m in cells]

    # the run's number of test problems: the most any cell was measured on, or the settings'
    # (--seeds pools every seed's test problems)
    runs = len(a.seeds.split(",")) if a and a.seeds else 1
    problems = [cell.get("n") or 0 for m in drawn for cell in cells[m].values()]
    full = max(problems + [a.n_test * runs if a else 0])

    for m in drawn:
        ns = [n for n in NS if n in cells[m] and cells[m][n]["mean"] is not None]
        x = [int(n) for n in ns]
        measured_on = max(cells[m][n].get("n") or full for n in ns)
        label = CURVES[m]
        if m == "prm_head" and head:
            label += f" (aggregation: {head})"
        if measured_on < full:
            label += f" ({measured_on}-problem subset)"
        colour = f"C{list(CURVES).index(m)}"  # one colour per method in every run's plot
        linestyle = "--" if m in ("oracle", "random") else "-"  # the two references dashed
        means = [cells[m][n]["mean"] for n in ns]
        ax.plot(x, means, marker="o", label=label, color=colour, linestyle=linestyle)
        # the band where there is an interval (none with too few problems: nan leaves a gap)
        lo = [nan_if_none(cells[m][n]["lo"]) for n in ns]
        hi = [nan_if_none(cells[m][n]["hi"]) for n in ns]
        ax.fill_between(x, lo, hi, alpha=0.1, color=colour)

    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])  # plain N, not 2^k
    ax.minorticks_off()
    ax.set_xlabel("N (candidates the reward model chooses from)")
    ax.set_ylabel("accuracy of the chosen answer")
    title = ("Best-of-N on the tiny base's own answers "
             "(bands: 95% bootstrap intervals over test problems)")
    if a:
        title += f"\n{settings(a)}"
    fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="who picks the answer", title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot(cells, path, a=None, head=None):
    """Accuracy vs N (the headline pool: the tiny base's own answers, all test problems),
    written to path."""
    try:
        fig = figure(cells, a, head)
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig.savefig(path, dpi=120)
    return str(path)


# -----------------------------------------------------------------------------
# the tables both report.md and the README show


def verdict_table(r):
    """The paper's findings: a row per finding with its verdict and the comparisons that decide it, then a row per
    comparison it reads with that comparison's own difference, interval, adjusted interval and verdicts."""
    differences = r["comparisons"]
    rows, cells = [], {}
    for v in r["verdicts"]:
        finding = f"**{v['finding']}**"
        rows.append(finding)
        deciding = "; ".join(comparison_label(k) for k in v.get("decided_by", []))
        cells[finding] = {"verdict": f"**{v['verdict']}**" + (f" ({deciding})" if deciding else ""),
                          "adjusted verdict": f"**{v.get('verdict_adjusted', '-')}**"}
        for k in v["comparisons"]:
            c, label = differences.get(k), f"· {comparison_label(k)}"
            raw, adjusted = v.get("each", {}).get(k, ["-", "-"])
            rows.append(label)
            cells[label] = {"n": str(c["n"]) if c else "-", "difference [95% CI]": ci(c, sign=True),
                            "adjusted interval": adjusted_ci(c), "verdict": raw, "adjusted verdict": adjusted}

    def cell(row, column):
        return cells[row].get(column, "")
    columns = ["n", "difference [95% CI]", "adjusted interval", "verdict", "adjusted verdict"]
    return md(rows, columns, cell, "finding of the paper / comparison (a - b at N=16)")


def comparison_label(key):
    """How a comparison's row reads: COMPARISONS' words, or for a cut of the segmentation ablation that it does
    not name, "writer's steps vs the CUT cut"; else the key itself."""
    if key in COMPARISONS:
        return COMPARISONS[key]
    if key.startswith("steps_vs_"):
        return f"writer's steps vs the {key[len('steps_vs_'):]} cut"
    return key


def comparison_table(r):
    """Every paired comparison the run made, one row each, in COMPARISONS' order."""
    differences = r["comparisons"]
    key_of = {COMPARISONS[k]: k for k in COMPARISONS if k in differences}  # row -> key
    for k in differences:  # a comparison COMPARISONS does not name (a fork's new cut): read by its key
        if k not in COMPARISONS:
            key_of[comparison_label(k)] = k

    def cell(label, column):
        difference = differences[key_of[label]]
        if column == "difference [95% CI]":
            return ci(difference, sign=True)
        if column == "problems":
            return str(difference["n"])
        return A_AHEAD[verdict(difference)]

    columns = ["difference [95% CI]", "problems", "a > b?"]
    return md(list(key_of), columns, cell, "comparison (a - b, N=16, paired)")


def machine():
    """Where bench ran, in words: the GPU (if any), the CPU cores, torch."""
    gpu = f"1 GPU ({torch.cuda.get_device_name()}) and " if torch.cuda.is_available() else ""
    no_gpu = "" if gpu else ", no GPU"
    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()}, torch {torch.__version__}"
    return f"{gpu}{cpu}{no_gpu})"


# -----------------------------------------------------------------------------
# report.md, one section at a time


def summary(r, a):
    """report.md's opening: the command, its time and machine, the settings, and what was
    chosen on the tune split."""
    quick = " --quick" if a.quick else ""
    seeds = f" --seeds {a.seeds}" if a.seeds else f" --seed {a.seed}"
    per_seed = " per seed" if a.seeds else ""
    tuning = r["tuning"]
    tune_scores = ", ".join(f"{agg} {score:.3f}" for agg, score in tuning["aggregation"].items())
    half = a.pool // 2
    return (f"# Bench report\n\n`python bench.py{quick}{seeds}`: {r['seconds']:.0f} s on "
            f"{r.get('machine') or machine()} "
            f"(every stage; this run {r['seconds_this_run']:.0f} s). "
            f"Test: {a.n_test} problems{per_seed} (content-disjoint from train, tune and dev), "
            f"pools of {a.pool} ({half} weak + {half} strong synthetic samples); "
            f"reward models ({a.head} head, beta {a.beta}) fine-tuned {a.steps} steps "
            f"from `{a.base}` on {a.labels} labels of {a.n_train} train problems. "
            f"Chosen on the tune split ({a.n_tune} problems): "
            f"the PRM's aggregation **{r['head']}** (Best-of-16 on tune: {tune_scores}); "
            f"tau {tuning['tau']['tau']}. "
            "Every interval: 95% bootstrap over test problems (clusters of shared content), "
            "paired for differences. "
            "The smallest paired difference this run resolves (median half-width): "
            f"**{r['resolvable']}**.\n")


def seeds_section(seeds):
    """A --seeds run: each headline number's mean and std over the seeds, then its value in
    each seed."""
    stats, per_seed = seeds["spread"], seeds["per_seed"]

    def cell(name, column):
        if column in ("mean", "std"):
            return f3(stats[name][column])
        seed = column.split()[1]  # "seed 3" -> "3"
        return f3(per_seed[seed].get(name))

    columns = ["mean", "std"] + [f"seed {seed}" for seed in per_seed]
    title = "Seeds: each seed's headline numbers, mean and spread (std)"
    return section(title, md(list(stats), columns, cell))


# the two headline pools as their titles name them
HEADLINE_WORDS = {"base": "the tiny base's own answers (a policy exactly as strong as the reward models' base)",
                  "strong": "the stronger policy's answers (not the reward models' base: the paper's setting)"}


def headline_section(pool, cells, head):
    """Best-of-N on a headline pool; at N=16 also per family (visual, text)."""

    def cell(method, column):
        if column in ("visual 16", "text 16"):
            family = column.split()[0]
            return f3(cells[family][method]["16"]["mean"])
        return bon_cell(cells["all"], method, column)

    rows = [m for m in HEADLINE if m in cells["all"]]
    columns = ["1", "4", "16 [95% CI]", "visual 16", "text 16"]
    title = f"Headline: Best-of-N on {HEADLINE_WORDS[pool]}; prm_head = prm_{head}"
    return section(title, md(rows, columns, cell))


def faithful_section(intervals, head):
    """faithful@N: the same picks, worth 1 only when every step is right by the oracle (a lucky answer, right
    after a wrong step, is worth 0), on every pool."""
    rows, body = [m for m in HEADLINE if m in intervals.get("base_faithful", {}).get("all", {})], []
    for pool, words in (("base_faithful", "the base's own answers"), ("strong_faithful", "the stronger policy's answers"),
                        ("synthetic_faithful", "the synthetic pools")):
        if pool in intervals:
            body.append(f"On {words}:\n\n" + md(rows, ["1", "4", "16 [95% CI]"],
                                                 lambda method, n: bon_cell(intervals[pool]["all"], method, n)))
    title = f"Faithful Best-of-N: every step of the pick right by the oracle (prm_head = prm_{head})"
    return section(title, "\n\n".join(body))


# what world_section shows of each pool and kind, in order
WORLD_COLUMNS = {"answers": "answers", "right": "right", "lucky": "lucky (of right)", "faithful": "every step right",
                 "steps": "steps", "first_error_at": "first wrong step at (1, 2, 3, 4)"}


def world_cell(stats, column):
    value = stats[column]
    if column == "answers":
        return str(value)
    if column == "first_error_at":
        return ", ".join(str(value.get(str(k), 0)) for k in range(1, 5))
    return f3(value)


def world_section(world):
    """The world the reward models face: per pool and kind, the share right, the share of right answers reached
    through a wrong step (lucky), every step right, steps per answer and where the first wrong step falls."""
    rows, stats = [], {}
    for pool, kinds in world.items():
        for kind, values in kinds.items():
            rows.append(f"{pool}: {kind}")
            stats[rows[-1]] = values
    columns = list(WORLD_COLUMNS.values())
    names = {words: key for key, words in WORLD_COLUMNS.items()}
    table = md(rows, columns, lambda row, column: world_cell(stats[row], names[column]))
    return section("The world: how right answers are reached (test pools, the oracle's step truth)", table)


def labelling_section(r, a):
    """Each labeller's cost and quality, then tau's grid on tune and the train labels' size."""
    labelling, tau = r["labelling"], r["tuning"]["tau"]
    labellers = [m for m in ("mc", "mcts") if m in labelling]
    columns = ["rollouts_per_solution", "first_error_agreement", "step_label_accuracy"]
    table = md(labellers, columns, lambda labeller, column: str(labelling[labeller][column]))
    grid = ", ".join(f"{value}: {scores['first_error_agreement']}"
                     for value, scores in tau.get("grid", {}).items())
    train = labelling["train_labels"]
    body = (f"{table}\n\nTau grid on tune ({a.labels}, first-error agreement): {grid}. "
            f"Train labels: {train['records']} records, "
            f"{train['rollouts_per_solution']} rollouts per solution.")
    if "consensus" in train:  # --labels consensus: the MCTS labels the base's likelihood agrees with
        kept = train["consensus"]
        body += (f" Consensus: {kept['kept']} of {kept['of']} MCTS-labelled solutions kept, where the base's step "
                 f"likelihood (below {kept['threshold']:.4f} reads as wrong) puts the first error where the labels do.")
    if "vs_oracle" in train:
        body += "\n\n" + train_labels_text(train["vs_oracle"])
    title = ("Labelling: tau chosen on tune, cost and quality on test problems "
             "against the oracle")
    return section(title, body)


def train_labels_text(quality):
    """The train labels against the oracle: over all solutions, the lucky ones, the rest."""
    def said(part, words):
        q = quality[part]
        if not q["records"]:
            return f"{words}: none"
        return (f"{words} ({q['records']} solutions): first error as the oracle's {q['first_error_agreement']:.3f}, "
                f"step labels {q['step_label_accuracy']:.3f}")
    return ("Train labels against the oracle (the same solutions): " + "; ".join(
        [said("all", "all"), said("lucky", "lucky (a right answer after a wrong step)"), said("rest", "the rest")])
        + ". A rollout from a lucky solution's wrong step still reaches the right answer, so the tree search "
        "calls the step right.")


def f1_section(step):
    """ProcessBench's first-error F1 per method, with its threshold (chosen on dev) and the
    accuracies on erroneous and on correct solutions."""

    def cell(method, column):
        scores = step[method]
        if column == "F1 [95% CI]":
            return f1_ci(scores)
        if column == "threshold":  # a number, or a content-free rule's words
            threshold = scores["threshold"]
            return f"{threshold:.2f}" if isinstance(threshold, (int, float)) else str(threshold)
        if column == "solutions":
            return str(scores["n"])
        return f3(scores[column])  # acc_error, acc_correct

    columns = ["F1 [95% CI]", "threshold", "acc_error", "acc_correct", "solutions"]
    title = "First-error F1 (ProcessBench), threshold from dev"
    return section(title, md(list(step), columns, cell))


def filter_section(r):
    """The ViLBench filter: items kept on half A of each pool, PRM minus ORM measured on
    half B."""
    filtered, differences = r["filter"], r["comparisons"]

    def cell(group, column):
        difference = differences[FILTER[group]]
        if column == "PRM - ORM [95% CI]":
            return ci(difference, sign=True)
        return str(difference["n"])

    groups = [g for g in ("kept", "the rest") if FILTER[g] in differences]
    table = md(groups, ["PRM - ORM [95% CI]", "problems"], cell, "items (half B)")
    body = ("Kept on half A of each pool (PRM minus ORM at N=8 > 0): "
            f"{filtered['kept']} of {filtered['of']} test problems; "
            f"measured on half B (the other 8 candidates):\n\n{table}")
    return section("The ViLBench filter", body)


def cross_domain_section(synthetic):
    """PRMs trained on visual labels only, text labels only, or both: Best-of-16 per family."""

    def cell(method, column):
        family = column.split()[0]  # "visual items" -> the visual pool
        return ci(synthetic[family][method]["16"])

    prms = [m for m in ("prm_head", "prm_visual_head", "prm_text_head") if m in synthetic["all"]]
    table = md(prms, ["all", "visual items", "text items"], cell)
    title = ("Cross-domain: PRMs trained on one family's labels (same steps), "
             "Best-of-16 [95% CI]")
    return section(title, table)


def speed_section(speed):
    """One pass over all steps vs one pass per prefix; where serve.py was measured, its
    rollouts per second."""
    body = (f"single pass {speed['single_pass_s']} s, "
            f"each prefix separately {speed['per_prefix_s']} s: {speed['slowdown']}x slower.")
    served = speed.get("served_rollouts_per_s")
    if served:
        rates = ", ".join(f"{in_flight}: {rate}" for in_flight, rate in served.items())
        body += (" Rollouts per second from the base served by serve.py (api.py), "
                 f"by requests in flight: {rates}.")
    title = f"Speed (CPU, {speed['answers']} answers, {speed['steps']} steps)"
    return section(title, body)


def report(r, a, curve):
    """report.md. r: results.json's dict; a: bench.Args; curve: the plot's path (or why
    there is no plot)."""
    intervals, head = r["intervals"], r["head"]
    synthetic = intervals["synthetic"]  # by family ("all", "visual", "text"), method, N
    sections = [summary(r, a)]
    if r.get("seeds"):
        sections.append(seeds_section(r["seeds"]))
    sections.append(section("The paper's findings: verdicts", verdict_table(r)))
    sections.append(section("Paired comparisons", comparison_table(r)))
    for pool in HEADLINE_WORDS:
        if pool in intervals:
            sections.append(headline_section(pool, intervals[pool], head))
    if r.get("world"):
        sections.append(world_section(r["world"]))
    if "base_faithful" in intervals:
        sections.append(faithful_section(intervals, head))

    for family in ("all", "visual", "text"):
        cells = synthetic[family]
        rows = [m for m in main_rows(r) if m in cells]
        table = bon_table(cells, rows, ["1", "2", "4", "8", "16 [95% CI]"])
        title = ("Best-of-N on the synthetic pools (a policy weaker than the base), "
                 f"{family} (prm_head = prm_{head})")
        sections.append(section(title, table))
    # majority and weighted vote at N=8 average random subsets: state the largest error
    mc_error = max(by_n["8"].get("mc_se") or 0 for by_n in synthetic["all"].values())
    sections.append(f"Plot: {curve}. Majority and weighted vote at N=8 are Monte-Carlo "
                    f"(1000 subsets a problem; error {mc_error:.4f}); "
                    "every other cell is exact.\n")

    hybrids = ["orm", "prm_min", "prm_mean", "prm_last", "prm_last2", "prm_last3"]
    table = bon_table(synthetic["all"], hybrids, ["N=4", "N=16 [95% CI]"])
    sections.append(section("Hybrid: score only the last k steps", table))

    gain = r["gain_over_one_sample"]  # by family, then method
    table = md(list(gain["text"]), ["text", "visual"],
               lambda method, family: f3_signed(gain[family][method]))
    sections.append(section("Gain over one sample at N=16, text vs visual", table))

    sections.append(labelling_section(r, a))
    sections.append(f1_section(r["step"]))

    auc = r["controls"]["fresh_auc_ci"]  # by model, then kind of fresh step
    kinds = sorted({kind for per_kind in auc.values() for kind in per_kind})
    table = md(list(auc), kinds, lambda model, kind: ci(auc[model].get(kind)))
    sections.append(section("Controls: fresh-step AUC per kind [95% CI]", table))

    # every cut of the steps under each aggregation ("steps_head", "chunks_head", ...),
    # then key-step weighting
    cut_names = [k[:-len("_min")] for k in r.get("segmentation", {}) if k.endswith("_min")]
    cuts = [f"{cut}_{agg}" for agg in ("head", "min", "mean") for cut in cut_names]
    rows = [m for m in cuts + ["key_weighted", "equal_weights"] if m in synthetic["all"]]
    table = bon_table(synthetic["all"], rows, ["N=4", "N=16 [95% CI]"])
    title = f"Step segmentation (same answers, {len(cut_names)} cuts) and key-step weighting"
    sections.append(section(title, table))

    sections.append(filter_section(r))
    sections.append(cross_domain_section(synthetic))

    if r.get("judges") and "judges" in intervals:
        sections.append(judges_section(r, a))
    if r.get("search"):
        sections.append(search_section(r["search"]))
    sections.append(speed_section(r["speed"]))
    return "\n".join(sections)


def judges_section(r, a):
    """The judge table: every judge in ORM mode, PRM mode and the hybrid over the stronger policy's answers, beside
    the trained PRM and ORM, with the best judge and mode as dev chose them."""
    cells, choice = r["intervals"]["judges"], r["judges"]
    rows = [m for m in ["random", "majority", "orm", "prm_head"] + list(cells["all"]) + ["oracle"]
            if m in cells["all"]]
    rows = list(dict.fromkeys(rows))

    def cell(method, column):
        if column in ("visual 16", "text 16"):
            family = column.split()[0]
            return f3(cells[family][method]["16"]["mean"]) if method in cells[family] else "-"
        return bon_cell(cells["all"], method, column)

    table = md(rows, ["1", "4", "16 [95% CI]", "visual 16", "text 16"], cell)
    best, mode = choice["best"]
    n = next(iter(cells["all"]["random"].values()))["n"] if "random" in cells["all"] else "-"
    body = (f"{table}\n\nJudges: {', '.join(choice['names'])} (their cards say how each was made). Modes: orm "
            "(one rubric rating an answer), prm (one a step, their mean), hybrid (the mean of the last 2 steps). "
            f"Best on dev ({choice['dev_problems']} problems, Best-of-16): **{best} {mode}**; "
            + ", ".join(f"{m} {v:.3f}" for m, v in choice["dev_bo16"].items())
            + "".join(f"; against {m} {v:.3f}" for m, v in choice.get("dev_reference", {}).items()) + ".")
    title = (f"The judge table: VLM judges over the stronger policy's answers ({n} test problems, "
             f"`--judges-n {a.judges_n}`)")
    return section(title, body)


def search_text(res):
    """The step search in a few sentences for the README: each scorer at b = 2 against the PRM's Best-of-N."""
    searched = {m: v for m, v in res["search"].items() if v["b"] == 2}
    if not searched:
        return ""
    said = "; ".join(f"{v['scorer']} {search.interval_text(v['correct'])}" for v in searched.values())
    return (f"Step search (search.py; the first {res['problems']} test problems, k={res.get('k', '-')} proposals a "
            f"step, beam width 2, about {next(iter(searched.values()))['tokens']:.0f} generated tokens a problem): "
            f"final-answer accuracy by the scorer that guides it: {said}. Accuracy against generated tokens, "
            "every method: `results/search.png`; the tables: `results/report.md`.")


def search_section(res):
    """The step search against Best-of-N at equal generated tokens (search.py's tables)."""
    title = (f"Step search at test time (search.py: k={res.get('k', '-')} proposals a step, the tiny base's "
             f"steps, the first {res['problems']} test problems)")
    return section(title, search.table(None, res=res) + "\n\nPlot: search.png.")


# -----------------------------------------------------------------------------
# the README's results block


def readme_cell(pools, method, column):
    """Column "visual N=16": the visual items' pool at N=16. N=16 shows its interval, a
    smaller N the mean. Column "faithful N=16": pools["faithful"], every step right."""
    family, n = column.split(" N=")
    if method not in pools[family]:
        return "-"
    cell = pools[family][method][n]
    if n == "16":
        return ci(cell)
    return f3(cell["mean"])


def lucky_text(r, pool="base"):
    """One sentence on how a headline pool's right answers are reached (empty when the run has no world
    statistics); for the base's pool also how the train labels read its lucky answers."""
    world = r.get("world", {}).get(pool)
    if not world:
        return ""
    kinds = ", ".join(f"{kind} {world[kind]['lucky']:.2f}" for kind in world if kind != "all")
    writer = {"base": "the base's", "strong": "the stronger policy's"}[pool]
    text = (f"Of {writer} right test answers, a share {world['all']['lucky']:.2f} are *lucky*: the right final "
            f"answer after a step the oracle marks wrong (by kind: {kinds}); accuracy@N counts them right, "
            "faithful@N does not.")
    labels = r.get("labelling", {}).get("train_labels", {}).get("vs_oracle")
    if pool == "base" and labels and labels["lucky"]["records"]:
        lucky, rest = labels["lucky"], labels["rest"]
        text += (f" The PRM learns from such answers too: {lucky['records']} of the {labels['all']['records']} "
                 f"labelled train solutions are lucky, and the tree search's labels put their first error where the "
                 f"oracle does on {lucky['first_error_agreement']:.2f} of them (on the rest: "
                 f"{rest['first_error_agreement']:.2f}).")
    return text + "\n"


def rule_text(r):
    """How a verdict is read, said once, with this run's numbers."""
    rule = r.get("evidence_rule", {})
    return ("A comparison **holds** when its paired 95% interval excludes 0 in the paper's direction, is "
            "**opposite** when it excludes 0 the other way, and is **not resolved** otherwise; with fewer than "
            f"{rule.get('min_clusters', '-')} contents it has no interval (**too few**). The adjusted interval "
            f"is Bonferroni's over the findings' {rule.get('adjusted_for', '-')} comparisons. A finding holds when "
            "every comparison it reads holds and is opposite when any is resolved the other way (named beside it; "
            "for \"neither wins everywhere\": holds when the two resolve in opposite directions).\n")


def headline_table(r, pool):
    """A headline pool's README table: accuracy at N = 1, 4, 16, per family at 16 and, where the run has it,
    faithful@16 (the same picks, worth 1 only when every step is right)."""
    cells = dict(r["intervals"][pool])
    columns = ["all N=1", "all N=4", "all N=16", "visual N=16", "text N=16"]
    if f"{pool}_faithful" in r["intervals"]:
        cells["faithful"] = r["intervals"][f"{pool}_faithful"]["all"]
        columns.append("faithful N=16")
    rows = [m for m in HEADLINE if m in cells["all"]]
    return md(rows, columns, lambda method, column: readme_cell(cells, method, column))


def strong_intro(r, a):
    """The second headline's first lines: who wrote the answers and how often it is right against the base."""
    world = r.get("world", {})
    right = (f" (one answer right {world['strong']['all']['right']:.2f} of the time, the base's "
             f"{world['base']['all']['right']:.2f})" if "strong" in world and "base" in world else "")
    return (f"The paper's setting: Best-of-N on a stronger policy's answers, `{a.strong}`{right}, {a.pool} a "
            "problem at the same temperature; the same reward models (fine-tuned from the tiny base on labels of "
            "the base's own answers), the same rows:\n" + lucky_text(r, "strong"))


# what a judge must beat, as the judge table's lines name it
REFERENCE_WORDS = {"random": "one random sample", "majority": "majority vote"}


def judges_intro(r, a):
    """The judge table's first lines in the README: who judged what, and dev's choice."""
    choice, cells = r["judges"], r["intervals"]["judges"]["all"]
    n = cells["random"]["16"]["n"] if "random" in cells else "-"
    best, mode = choice["best"]
    return (f"The paper's first half, VLMs as judges: {len(choice['names'])} tiny judges taught to rate with the "
            "rubric (`checkpoints/tiny-judge-*`, their cards say how), each in ORM mode (one rating an answer), PRM "
            "mode (one a step, their mean) and the hybrid (the last 2 steps), picking from the stronger policy's "
            f"16 answers to {n} test problems (`--judges-n {a.judges_n}`), beside the trained PRM; best on dev "
            f"({choice['dev_problems']} problems): **{best} {mode}**, Best-of-16 {choice['dev_bo16'][f'{best} {mode}']:.3f}"
            + "".join(f", {REFERENCE_WORDS[m]} {v:.3f}" for m, v in choice.get("dev_reference", {}).items())
            + ":\n")


def judges_table(r):
    """The judge table in the README: each judge's modes beside one random sample and the trained PRM and ORM."""
    cells = r["intervals"]["judges"]  # by part ("all", "visual", "text"), as readme_cell reads them
    first = ["random", "prm_head", "orm"]
    rows = first + [m for m in cells["all"] if m not in first + ["majority", "oracle"]]
    return md([m for m in rows if m in cells["all"]], ["all N=4", "all N=16", "visual N=16", "text N=16"],
              lambda method, column: readme_cell(cells, method, column))


def update_readme(r, a, path=ROOT / "README.md"):
    """Replace the README's results block (between the bench markers) with this run's
    verdicts and headline tables."""

    quick = " --quick" if a.quick else ""
    seeds = f" --seeds {a.seeds}" if a.seeds else ""
    run = (f"`python bench.py{quick}{seeds}` (seed {a.seeds or a.seed}): "
           f"{r['seconds'] / 60:.1f} minutes on {r.get('machine') or machine()}. "
           f"Test: {a.n_test} problems (content-disjoint from train, tune and dev). "
           f"Headline pools: {a.pool} answers per problem sampled from the tiny base "
           f"(temperature {a.temperature}), and as many from a stronger policy (`{a.strong}`); "
           f"PRM and ORM ({a.head} head) fine-tuned "
           f"{a.steps} steps from the same base on {a.labels} labels of {a.n_train} train "
           f"problems ({a.label_policy} policy: its own answers and rollouts); "
           f"the PRM's aggregation (**{r['head']}**) and tau ({r['tuning']['tau']['tau']}) "
           "chosen on the tune split. "
           "Intervals: 95% bootstrap over test problems; differences paired. "
           f"Smallest resolvable paired difference: **{r['resolvable']}**. "
           "Every table: `results/report.md`; what they say: `docs/RESULTS.md`.\n")
    headline_intro = ("Headline: Best-of-N on the tiny base's own answers (exact expectation "
                      "over all N-subsets of the pool of 16; prm_head is the PRM's argmax with "
                      f"{r['head']}; base_likelihood_min is the untrained base's own step "
                      "likelihood" + ("; faithful: the pick has every step right by the oracle"
                                      if "base_faithful" in r["intervals"] else "") + "):\n"
                      + lucky_text(r))
    f1_intro = ("First-error F1 (ProcessBench; threshold from dev) [95% CI] "
                "(@base: on the base's own answers; @strong: on the stronger policy's):\n")
    # the block's lines; "" is the blank line after a table
    block = [run,
             "The paper's findings:\n", rule_text(r),
             verdict_table(r), "",
             headline_intro, headline_table(r, "base"), ""]
    if "strong" in r["intervals"]:
        block += [strong_intro(r, a), headline_table(r, "strong"), ""]
    block += [f1_intro,
              md(list(r["step"]), ["F1"], lambda method, column: f1_ci(r["step"][method])), ""]
    if r.get("judges") and "judges" in r["intervals"]:
        block += [judges_intro(r, a), judges_table(r), ""]
    if r.get("search"):
        block += [search_text(r["search"]), ""]

    text = path.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path}: no {start} ... {end} block to fill")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(before + start + "\n" + "\n".join(block) + "\n" + end + after)


# -----------------------------------------------------------------------------
# the headline numbers (bench's last stdout line) and their spread over seeds


def spread(heads):
    """Each headline number over seeds: mean and sample standard deviation."""
    stats = {}
    for key, first in heads[0].items():
        if not isinstance(first, (int, float)):
            continue  # the head's name, the verdicts, an F1 the run did not measure (None)
        values = [h[key] for h in heads]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        stats[key] = {"mean": round(statistics.mean(values), 4), "std": round(std, 4)}
    return stats


def headline(res):
    """The last stdout line: the headline numbers (the base's own answers; strong_: the stronger policy's; syn_:
    the synthetic pools) as one JSON object."""
    base, synthetic, step = res["bon_base_policy"]["all"], res["bon"]["all"], res["step"]
    strong = res.get("bon_strong_policy", {}).get("all", {})  # the stronger policy's answers (a run may have none)

    def f1(method):  # None where the run has no F1 for the method
        return step.get(method, {}).get("first_error_f1")

    at_16 = ("prm_head", "weighted_prm", "orm", "majority", "base_likelihood_min", "oracle")
    synthetic_at_16 = ("prm_head", "weighted_prm", "orm", "majority")
    return {"seconds": res["seconds"],
            "head": res["head"],
            **{f"{m}@16": round(base[m]["16"], 4) for m in at_16},
            "random@1": round(base["random"]["1"], 4),
            "prm_f1": f1("prm@base"),
            "orm_f1": f1("orm@base"),
            "base_likelihood_f1": f1("base_likelihood@base"),
            **{f"strong_{m}@16": round(strong[m]["16"], 4) for m in at_16 if m in strong},
            **({"strong_prm_f1": f1("prm@strong"), "strong_base_likelihood_f1": f1("base_likelihood@strong")}
               if strong else {}),
            **{f"syn_{m}@16": round(synthetic[m]["16"], 4) for m in synthetic_at_16},
            "syn_prm_f1": f1("prm"),
            "verdicts": {v["finding"]: v["verdict"] for v in res["verdicts"]},
            "resolvable": res["resolvable"]}


def write_outputs(res, rows, fe_items, auc_items, a, out):
    """results.json, per_problem.jsonl, per_step.jsonl, the plot, report.md (printed);
    with --readme also the README's block and results/."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    meta = {"pool": "meta", "head": res["head"], "kept": res["filter"]["kept_ids"],
            "seed": a.seed, "min_clusters": res.get("evidence_rule", {}).get("min_clusters")}
    if res.get("judges"):  # the judge table's choice made on dev: what its comparisons read
        meta["judges"] = {k: res["judges"][k] for k in ("best", "solver_pair")}
    data.write_jsonl(out / "per_problem.jsonl", [meta] + rows)
    data.write_jsonl(out / "per_step.jsonl",
                     [{"metric": "first_error", **item} for item in fe_items]
                     + [{"metric": "fresh_auc", **item} for item in auc_items])
    # a --seeds run tunes the aggregation per seed: no one head to name in the legend
    head = "tuned per seed" if res.get("seeds") else res["head"]
    curve = plot(res["intervals"]["base"]["all"], out / "bon_curve.png", a, head)
    pictures = ["bon_curve.png"]
    if res.get("search"):
        search.plot(res["search"], out / "search.png", f"step search vs Best-of-N at equal generated tokens: the "
                    f"tiny base's steps, {res['search']['problems']} test problems, seed {a.seed}")
        pictures.append("search.png")
    text = report(res, a, curve)
    (out / "report.md").write_text(text)
    print(text)
    if a.readme:
        update_readme(res, a)
        (ROOT / "results").mkdir(exist_ok=True)
        for name in ("results.json", "report.md", *pictures):
            shutil.copy(out / name, ROOT / "results" / name)


# -----------------------------------------------------------------------------
# two runs compared: does a rerun reproduce the numbers?

# what may differ between two runs of the same code: how long they took, where, and with which paths
NOT_NUMBERS = {"seconds", "seconds_this_run", "stage_seconds", "machine", "speed", "config"}


def differences(old, new, path=""):
    """Every number (or value) that differs between two results.json objects, timings aside: ["PATH: OLD vs NEW"]."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if k in NOT_NUMBERS:
                continue
            if k not in old or k not in new:
                out.append(f"{path}/{k}: only in the {'second' if k in new else 'first'}")
            else:
                out += differences(old[k], new[k], f"{path}/{k}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} vs {new!r}"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--diff", nargs=2, metavar=("FIRST", "SECOND"), required=True,
                    help="two results.json files: print every number that differs (timings aside)")
    a = ap.parse_args(argv)
    first, second = (json.loads(Path(p).read_text()) for p in a.diff)
    found = differences(first, second)
    for line in found:
        print(line)
    print(f"{len(found)} numbers differ (timings, machine and settings aside)")
    return found


if __name__ == "__main__":
    main()
