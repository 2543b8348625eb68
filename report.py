"""bench.py's results as a person reads them: the markdown tables of report.md, the accuracy-vs-N plot, and the
headline block of README.md (between the bench markers). Rendering only: every number comes from results.json.
"""
import os
from pathlib import Path

import torch


def plot(bon_all, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in ("oracle", "weighted_prm", "prm_mean", "prm_min", "orm", "majority", "judge_prm", "random"):
        if m in bon_all:
            ns = sorted(bon_all[m], key=int)
            ax.plot([int(n) for n in ns], [bon_all[m][n] for n in ns], marker="o", label=m,
                    linestyle="--" if m in ("oracle", "random") else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (candidates)")
    ax.set_ylabel("accuracy")
    ax.set_title("Best-of-N on the synthetic suite (test)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return str(path)


def md(rows, cols, cell):
    lines = ["| | " + " | ".join(map(str, cols)) + " |", "|---|" + "---:|" * len(cols)]
    return "\n".join(lines + [f"| {r} | " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows])


def f3(x):
    return "-" if x is None else f"{x:.3f}"


def report(r, a, curve):
    ns = ["1", "2", "4", "8", "16"]
    order = ["random", "majority", "weighted_prm", "orm", "prm_min", "prm_mean", "prm_prod", "prm_last", "prm_last2",
             "judge_orm", "judge_prm", "oracle"]
    cell = lambda tab: lambda m, n: f3(tab.get(m, {}).get(n))  # noqa: E731
    t = [f"# Bench report\n\n`python bench.py{' --quick' if a.quick else ''} --seed {a.seed}`: {r['seconds']:.0f} s "
         f"on {os.cpu_count()} CPU cores (every stage; this run {r.get('seconds_this_run', r['seconds']):.0f} s)."
         f" Test: {a.n_test} problems, pools of {a.pool} "
         f"({a.pool // 2} weak + {a.pool // 2} strong synthetic samples); reward models ({a.head} head, beta {a.beta}) "
         f"fine-tuned {a.steps} steps "
         f"from `{a.base}` on {a.labels} labels of {a.n_train} train problems. Judge methods: {a.judge_n} test "
         f"problems only (half of each family).\n"]
    for part in ("all", "visual", "text"):
        t.append(f"## (1) Best-of-N accuracy, {part}\n\n" + md(order, ns, cell(r["bon"][part])) + "\n")
    t.append(f"Plot: {curve}\n")
    hy = ["orm", "prm_min", "prm_mean", "prm_last", "prm_last2", "prm_last3"]
    t.append("## (2) Hybrid: score only the last k steps (N=16)\n\n" +
             md(hy, ["N=4", "N=16"], lambda m, n: f3(r["hybrid"][m][n[2:]])) + "\n")
    g = r["gain_over_one_sample"]
    t.append("## (3) Gain over one sample at N=16, text vs visual\n\n" +
             md(list(g["text"]), ["text", "visual"], lambda m, f: f"{g[f][m]:+.3f}") + "\n")
    lab = r["labelling"]
    t.append("## (4) Labelling cost and quality against the oracle (`tree_search.evaluate`)\n\n" +
             md(["mc", "mcts"], ["rollouts_per_solution", "first_error_agreement", "step_label_accuracy"],
                lambda m, c: str(lab[m][c])) +
             f"\n\nTrain labels ({a.labels}): {lab['train_labels']['records']} records, "
             f"{lab['train_labels']['rollouts_per_solution']} rollouts per solution.\n")
    t.append("## (5) First-error F1 (ProcessBench), threshold from dev\n\n" +
             md(list(r["step"]), ["first_error_f1", "threshold", "acc_error", "acc_correct"],
                lambda m, c: f3(r["step"][m][c]) if c != "threshold" else f"{r['step'][m][c]:.2f}") + "\n")
    s = r["speed"]
    t.append(f"## (6) Speed (CPU, {s['answers']} answers, {s['steps']} steps)\n\nsingle pass {s['single_pass_s']} s, "
             f"each prefix separately {s['per_prefix_s']} s: {s['slowdown']}x slower.\n")
    c = r["controls"]
    kinds = sorted({k for v in c["fresh_auc"].values() for k in v})
    t.append("## (7) Controls: fresh-step AUC per kind, and Best-of-16 with each score (min)\n\n" +
             md(list(c["fresh_auc"]), kinds + ["BoN@16"], lambda m, k: f3(c["bon"][m]["16"]) if k == "BoN@16"
                else f3(c["fresh_auc"][m].get(k))) + "\n")
    sg = r["segmentation"]
    t.append("## (8) Step segmentation (same answers, three cuts) and key-step aggregation\n\n" +
             md(list(sg), ["N=4", "N=16"], lambda m, n: f3(sg[m][n[2:]])) + "\n")
    if r.get("bon_base_policy"):
        t.append("## Best-of-N on the tiny base's own samples (all)\n\n" +
                 md(order[:-3] + ["oracle"], ns, cell(r["bon_base_policy"]["all"])) + "\n")
    return "\n".join(t)


def update_readme(r, a, path=Path(__file__).resolve().parent / "README.md"):
    """Replace the README's results block (between the bench markers) with this run's headline tables."""
    import platform
    b, ns = r["bon"], ["1", "4", "16"]
    rows = ["random", "majority", "weighted_prm", "orm", "prm_min", "prm_mean", "prm_last2", "judge_orm", "judge_prm",
            "oracle"]
    cols = [f"{p} N={n}" for p in ("all", "visual", "text") for n in ns]
    block = [f"`python bench.py{' --quick' if a.quick else ''}` (seed {a.seed}): {r['seconds'] / 60:.1f} minutes on "
             f"{os.cpu_count()} CPU cores ({platform.machine()}, torch {torch.__version__}, no GPU). Test: "
             f"{a.n_test} problems, pools of {a.pool} synthetic answers (half weak, half strong sampler); PRM and ORM "
             f"({a.head} head) fine-tuned {a.steps} steps from the tiny base on {a.labels} labels of {a.n_train} train problems; "
             f"judges (the base, rubric prompt, logits) on {a.judge_n} test problems (half of each family). Full "
             f"tables: `results/report.md` (a copy of `{a.out}/report.md`, with `results.json` and `bon_curve.png`).\n",
             "Best-of-N accuracy (mean over random subsets of the pool of 16):\n",
             md(rows, cols, lambda m, c: f3(b[c.split()[0]][m][c.split("=")[1]])), "",
             "First-error F1 (ProcessBench; threshold from the dev split) and fresh-step AUC (all earlier steps "
             "right) per step kind:\n",
             md(["prm", "orm", "judge_prm", "prm_blank", "prior", "base_likelihood"], ["F1", "perception AUC",
                "visual arith AUC", "text arith AUC"], lambda m, c: f3(r["step"][m]["first_error_f1"]) if c == "F1"
                else f3(r["controls"]["fresh_auc"].get("orm_steps" if m == "orm" else m, {}).get(
                    {"perception AUC": "perception", "visual arith AUC": "visual_arith",
                     "text arith AUC": "text_arith"}[c]))), ""]
    text = path.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path}: no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + "\n".join(block) + "\n" + end + rest.split(end, 1)[1])
