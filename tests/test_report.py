"""report.py on a literal results dict: update_readme replaces only the block between the bench markers, with the
verdict table (exact verdict words) and the headline tables (every N=16 cell "mean [lo, hi]"); report() renders
every section from the same dict; plot() draws the bands; the shipped README's block is what results/results.json
renders."""
import dataclasses
import json
from pathlib import Path

import pytest

import bench
from lab import evidence
from lab import report

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
NS = ("1", "2", "4", "8", "16")
PARTS = {"all": 0.0, "visual": -0.1, "text": 0.1}


# the settings the block states, given here (bench.Args' defaults are tuned and may move)
ARGS = bench.Args(out="out/somewhere", seed=0, n_train=2000, n_tune=80, n_test=240, pool=16, labels="mcts",
                  head="implicit", beta=0.1, steps=1200, base="tiny")


def cell(mean):
    """A cell whose interval is mean - 0.049 .. mean + 0.043: 0.85 -> "0.850 [0.801, 0.893]"."""
    return {"mean": mean, "lo": round(mean - 0.049, 3), "hi": round(mean + 0.043, 3), "n": 160, "mc_se": 0.0}


def cells(i, dp):
    """Method number i, part offset dp: N=1 0.5, then +0.01 per N step and +0.001 per method (each cell distinct)."""
    return {n: cell(round(0.5 + dp + 0.01 * k + 0.001 * i, 3)) for k, n in enumerate(NS)}


def diff(mean, lo, hi, n=160):
    """A paired difference; its adjusted interval 0.02 wider on each side."""
    return {"mean": mean, "lo": lo, "hi": hi, "n": n, "lo_adj": round(lo - 0.02, 3), "hi_adj": round(hi + 0.02, 3)}


def literal_results():
    syn = list(evidence.method_sets("mean")["synthetic"])
    iv = {"synthetic": {p: {m: cells(i, dp) for i, m in enumerate(syn)} for p, dp in PARTS.items()},
          "base": {p: {m: cells(i, dp) for i, m in enumerate(("random", "majority", "orm", "prm_head", "oracle"))}
                   for p, dp in PARTS.items()},
          "judges": {p: {m: cells(i, dp) for i, m in enumerate(("random", "prm_head", "j1 orm", "j1 prm", "j1 hybrid"))}
                     for p, dp in PARTS.items()}}
    iv["synthetic"]["all"]["prm_head"]["16"] = cell(0.85)
    comps = {"prm_vs_orm": diff(0.05, 0.01, 0.09), "prm_vs_orm_visual": diff(0.1, 0.02, 0.18, 80),
             "prm_vs_orm_text": diff(-0.06, -0.11, -0.01, 80), "last2_vs_mean": diff(0.0, -0.02, 0.02),
             "last2_vs_orm": diff(0.05, 0.01, 0.09), "key_vs_equal": diff(-0.03, -0.05, -0.01)}
    verdicts = [{"finding": "neither ORM nor PRM wins everywhere", "verdict": "holds", "verdict_adjusted": "holds",
                 "decided_by": ["prm_vs_orm_visual", "prm_vs_orm_text"],
                 "comparisons": ["prm_vs_orm_visual", "prm_vs_orm_text"],
                 "each": {"prm_vs_orm_visual": ["holds", "holds"], "prm_vs_orm_text": ["opposite", "opposite"]}},
                {"finding": "the hybrid (score the last 2 steps) >= full PRM (mean) and ORM", "verdict": "not resolved",
                 "verdict_adjusted": "not resolved", "decided_by": [], "comparisons": ["last2_vs_mean", "last2_vs_orm"],
                 "each": {"last2_vs_mean": ["not resolved", "not resolved"], "last2_vs_orm": ["holds", "holds"]}},
                {"finding": "weighting key steps beats equal weights", "verdict": "opposite",
                 "verdict_adjusted": "not resolved", "decided_by": ["key_vs_equal"], "comparisons": ["key_vs_equal"],
                 "each": {"key_vs_equal": ["opposite", "not resolved"]}},
                {"finding": "PRM > ORM on the ViLBench-filtered items", "verdict": "not run",
                 "verdict_adjusted": "not run", "decided_by": [], "comparisons": ["filtered_prm_vs_orm"], "each": {}}]
    step = {k: {"first_error_f1": f, "lo": round(f - 0.1, 3), "hi": round(f + 0.05, 3), "n": 2560, "threshold": 0.42,
                "acc_error": 0.5, "acc_correct": 0.9} for k, f in (("prm", 0.798), ("orm", 0.682), ("prior", 0.303))}
    fresh = {k: {kind: cell(v) for kind, v in zip(("perception", "text_arith"), vals)}
             for k, vals in (("prm", (0.79, 0.95)), ("prm_blank", (0.488, 0.907)))}
    controls = {"fresh_auc": {k: {kind: v["mean"] for kind, v in d.items()} for k, d in fresh.items()},
                "fresh_auc_ci": fresh}
    return {"intervals": iv, "head": "mean", "comparisons": comps, "verdicts": verdicts, "resolvable": 0.041,
            "step": step, "controls": controls,
            "tuning": {"aggregation": {"min": 0.81, "mean": 0.84}, "head": "mean",
                       "tau": {"tau": 0.2, "grid": {"0.0": {"first_error_agreement": 0.6},
                                                    "0.2": {"first_error_agreement": 0.9}}}},
            "gain_over_one_sample": {"text": {"majority": 0.25, "prm_head": 0.36}, "visual": {"majority": 0.2,
                                                                                              "prm_head": 0.27}},
            "labelling": {"mcts": {"rollouts_per_solution": 12.7, "first_error_agreement": 0.949,
                                   "step_label_accuracy": 0.97}, "train_labels": {"records": 8000,
                                                                                  "rollouts_per_solution": 12.5}},
            "filter": {"kept": 70, "of": 240, "kept_ids": []}, "speed": {"answers": 64, "steps": 300,
                                                                         "single_pass_s": 0.5, "per_prefix_s": 2.0,
                                                                         "slowdown": 4.0},
            "judges": {"names": ["j1"], "best": ["j1", "prm"], "solver_pair": None, "dev_problems": 30,
                       "dev_bo16": {"j1 orm": 0.6, "j1 prm": 0.7, "j1 hybrid": 0.65}},
            "seconds": 606.0, "seconds_this_run": 12.0}


def readme_with_block(tmp_path):
    head = "# A project\n\nIntro text.\n\n## Results\n\n"
    tail = "\n\n### Reading\n\nText after the block, kept as it is.\n"
    readme = tmp_path / "README.md"
    readme.write_text(head + START + "\nan old table\n| x | 1 |\n" + END + tail)
    return readme, head, tail


def test_update_readme_replaces_only_the_block(tmp_path):
    readme, head, tail = readme_with_block(tmp_path)
    a = ARGS
    report.update_readme(literal_results(), a, path=readme)
    text = readme.read_text()
    assert text.startswith(head + START + "\n") and text.endswith(END + tail)
    assert text.count(START) == text.count(END) == 1 and "an old table" not in text
    block = text[len(head + START + "\n"):-len(END + tail)].splitlines()
    assert block[0].startswith("`python bench.py` (seed 0): 10.1 minutes on ")
    assert ("Headline pools: 16 answers per problem sampled from the tiny base (temperature 1.0), and as many from "
            "a stronger policy (`tiny-strong`); PRM and ORM "
            "(implicit head) fine-tuned 1200 steps from the same base on mcts labels of 2000 train problems (base "
            "policy: its own answers and rollouts)") in block[0]
    assert "Test: 240 problems" in block[0] and "aggregation (**mean**) and tau (0.2)" in block[0]
    assert "Smallest resolvable paired difference: **0.041**" in block[0]
    head = ("| finding of the paper / comparison (a - b at N=16) | n | difference [95% CI] | adjusted interval "
            "| verdict | adjusted verdict |")
    verdicts = block.index(head)
    assert block[verdicts + 1:verdicts + 12] == [
        "|---|---:|---:|---:|---:|---:|",
        "| **neither ORM nor PRM wins everywhere** |  |  |  | **holds** (PRM vs ORM, visual items; PRM vs ORM, text "
        "items) | **holds** |",
        "| · PRM vs ORM, visual items | 80 | +0.100 [+0.020, +0.180] | [+0.000, +0.200] | holds | holds |",
        "| · PRM vs ORM, text items | 80 | -0.060 [-0.110, -0.010] | [-0.130, +0.010] | opposite | opposite |",
        "| **the hybrid (score the last 2 steps) >= full PRM (mean) and ORM** |  |  |  | **not resolved** | "
        "**not resolved** |",
        "| · hybrid last-2 vs mean | 160 | +0.000 [-0.020, +0.020] | [-0.040, +0.040] | not resolved | not resolved |",
        "| · hybrid last-2 vs ORM | 160 | +0.050 [+0.010, +0.090] | [-0.010, +0.110] | holds | holds |",
        "| **weighting key steps beats equal weights** |  |  |  | **opposite** (key-step weights vs equal weights "
        "(mean)) | **not resolved** |",
        "| · key-step weights vs equal weights (mean) | 160 | -0.030 [-0.050, -0.010] | [-0.070, +0.010] | opposite "
        "| not resolved |",
        "| **PRM > ORM on the ViLBench-filtered items** |  |  |  | **not run** | **not run** |",
        "| · PRM vs ORM on ViLBench-filtered items (half B) | - | - | - | - | - |"]
    assert "A comparison **holds** when its paired 95% interval excludes 0" in text  # the rule, said once
    # Best-of-N: method i of the synthetic pool's rules (random 0, majority 1, weighted_prm 2, orm 3, oracle 9,
    # prm_head 11) at N=1 0.5 + 0.001 i (+0.01 per N step, -0.1 visual, +0.1 text); N=1 and N=4 as means, N=16 with
    # its interval; prm_head at N=16 (all) is set to 0.85
    cols = "|  | all N=1 | all N=4 | all N=16 | visual N=16 | text N=16 |"
    top = block.index(cols)  # the headline: the base pool's methods (random 0 .. oracle 4), in HEADLINE's order
    assert block[top - 2:top + 8] == [
        "Headline: Best-of-N on the tiny base's own answers (exact expectation over all N-subsets of the pool of 16; "
        "prm_head is the PRM's argmax with mean; base_likelihood_min is the untrained base's own step likelihood):",
        "", cols, "|---|---:|---:|---:|---:|---:|",
        "| random | 0.500 | 0.520 | 0.540 [0.491, 0.583] | 0.440 [0.391, 0.483] | 0.640 [0.591, 0.683] |",
        "| majority | 0.501 | 0.521 | 0.541 [0.492, 0.584] | 0.441 [0.392, 0.484] | 0.641 [0.592, 0.684] |",
        "| orm | 0.502 | 0.522 | 0.542 [0.493, 0.585] | 0.442 [0.393, 0.485] | 0.642 [0.593, 0.685] |",
        "| prm_head | 0.503 | 0.523 | 0.543 [0.494, 0.586] | 0.443 [0.394, 0.486] | 0.643 [0.594, 0.686] |",
        "| oracle | 0.504 | 0.524 | 0.544 [0.495, 0.587] | 0.444 [0.395, 0.487] | 0.644 [0.595, 0.687] |", ""]
    f1 = block.index("|  | F1 |")
    judges = block.index("|  | all N=4 | all N=16 | visual N=16 | text N=16 |")
    assert block[f1 + 1:judges - 2] == ["|---|---:|", "| prm | 0.798 [0.698, 0.848] |",
                                        "| orm | 0.682 [0.582, 0.732] |", "| prior | 0.303 [0.203, 0.353] |", ""]
    assert block[judges - 2].startswith("The paper's first half, VLMs as judges: 1 tiny judges") and \
        block[judges - 2].endswith("best on dev (30 problems): **j1 prm**, Best-of-16 0.700:") and block[judges - 1] == ""
    assert block[judges + 2:] == [
        "| random | 0.520 | 0.540 [0.491, 0.583] | 0.440 [0.391, 0.483] | 0.640 [0.591, 0.683] |",
        "| prm_head | 0.521 | 0.541 [0.492, 0.584] | 0.441 [0.392, 0.484] | 0.641 [0.592, 0.684] |",
        "| j1 orm | 0.522 | 0.542 [0.493, 0.585] | 0.442 [0.393, 0.485] | 0.642 [0.593, 0.685] |",
        "| j1 prm | 0.523 | 0.543 [0.494, 0.586] | 0.443 [0.394, 0.486] | 0.643 [0.594, 0.686] |",
        "| j1 hybrid | 0.524 | 0.544 [0.495, 0.587] | 0.444 [0.395, 0.487] | 0.644 [0.595, 0.687] |", ""]
    report.update_readme(literal_results(), a, path=readme)  # a second run writes the same file
    assert readme.read_text() == text


def test_update_readme_without_markers_refuses_and_writes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# A project\n" + START + "\nno end marker\n")
    with pytest.raises(SystemExit, match="no <!-- bench:start --> ... <!-- bench:end --> block"):
        report.update_readme(literal_results(), bench.Args(), path=readme)
    assert readme.read_text() == "# A project\n" + START + "\nno end marker\n"


def test_report_renders_every_section_from_the_results():
    r = literal_results()
    text = report.report(r, ARGS, "bon_curve.png")
    lines = text.splitlines()
    assert lines[0] == "# Bench report"
    titles = [line[3:] for line in lines if line.startswith("## ")]
    for start in ("The paper's findings", "Paired comparisons", "Headline: Best-of-N on the tiny base's own answers",
                  "Best-of-N on the synthetic pools", "Hybrid", "Gain over one sample", "Labelling",
                  "First-error F1", "Controls", "Step segmentation", "The ViLBench filter", "Cross-domain", "The judge table",
                  "Speed"):
        assert any(t.startswith(start) for t in titles), start
    assert "aggregation **mean** (Best-of-16 on tune: min 0.810, mean 0.840); tau 0.2" in text
    assert "Best on dev (30 problems, Best-of-16): **j1 prm**; j1 orm 0.600, j1 prm 0.700, j1 hybrid 0.650." in text
    assert "| j1 hybrid | 0.504 | 0.524 | 0.544 [0.495, 0.587] | 0.444 | 0.644 |" in lines
    assert "| · PRM vs ORM, visual items | 80 | +0.100 [+0.020, +0.180] | [+0.000, +0.200] | holds | holds |" in lines
    # paired comparisons: the sign of the interval says which is ahead
    assert "| PRM vs ORM | +0.050 [+0.010, +0.090] | 160 | yes |" in lines  # rows read as report.COMPARISONS
    assert "| PRM vs ORM, text items | -0.060 [-0.110, -0.010] | 80 | no, b > a |" in lines
    assert "| hybrid last-2 vs mean | +0.000 [-0.020, +0.020] | 160 | not resolved |" in lines
    assert "| prm | 0.798 [0.698, 0.848] | 0.42 | 0.500 | 0.900 | 2560 |" in lines  # first-error F1
    assert "| prm_blank | 0.488 [0.439, 0.531] | 0.907 [0.858, 0.950] |" in lines  # fresh-step AUC
    assert "| mcts | 12.7 | 0.949 | 0.97 |" in lines
    assert "Tau grid on tune (mcts, first-error agreement): 0.0: 0.6, 0.2: 0.9." in text
    assert "| prm_head | +0.360 | +0.270 |" in lines
    assert "70 of 240 test problems" in text
    assert "single pass 0.5 s, each prefix separately 2.0 s: 4.0x slower." in text
    # a seeds run adds its table: each headline number's mean, spread and per-seed values
    r["seeds"] = {"per_seed": {"0": {"orm@16": 0.8}, "1": {"orm@16": 0.9}},
                  "spread": {"orm@16": {"mean": 0.85, "std": 0.0707}}}
    text = report.report(r, dataclasses.replace(ARGS, seeds="0,1"), "x.png")
    assert "--seeds 0,1" in text and "| orm@16 | 0.850 | 0.071 | 0.800 | 0.900 |" in text.splitlines()


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = report.plot(literal_results()["intervals"]["synthetic"]["all"], tmp_path / "curve.png", ARGS)
    assert out == str(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_block_is_what_the_shipped_results_render(tmp_path):
    r = json.loads((ROOT / "results" / "results.json").read_text())
    if "verdicts" not in r:
        pytest.skip("results/results.json predates the verdicts; regenerate it with python bench.py --readme")
    copy = tmp_path / "README.md"
    copy.write_text((ROOT / "README.md").read_text())
    report.update_readme(r, bench.Args(**r["config"]), path=copy)
    block = lambda t: t.split(START)[1].split(END)[0].splitlines()[1:]  # noqa: E731  (line 1: machine, torch)
    assert block(copy.read_text()) == block((ROOT / "README.md").read_text())


def test_plot_reads_plain_n_the_run_settings_and_names_subsets():
    """bon_curve.png: x ticks 1..16 as plain numbers, the run's settings in the title, a legend entry per method, and
    a curve on fewer problems than the run's test set named as a subset."""
    pytest.importorskip("matplotlib")
    cells = {m: {n: {**c, "n": 240} for n, c in cells_.items()} for m, cells_ in
             literal_results()["intervals"]["base"]["all"].items()}
    cells["base_likelihood_min"] = {n: {**cell(0.6), "n": 32} for n in NS}
    fig = report.figure(cells, ARGS, "mean")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8", "16"]
    assert list(ax.get_xticks()) == [1, 2, 4, 8, 16] and ax.get_xscale() == "log"
    assert ax.get_xlabel().startswith("N ") and ax.get_ylabel() == "accuracy of the chosen answer"
    title = fig.get_suptitle().splitlines()
    assert title == ["Best-of-N on the tiny base's own answers (bands: 95% bootstrap intervals over test problems)",
                     "seed 0, 240 test problems, 16 answers each",
                     "PRM and ORM: implicit head, 1200 steps from tiny on mcts labels of 2000 train problems "
                     "(base policy)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "oracle (any right)", "PRM argmax (aggregation: mean)", "base's own step likelihood (min) (32-problem subset)",
        "ORM", "majority vote", "one sample"]
    quick = report.figure(cells, dataclasses.replace(ARGS, quick=True, seeds="0,1"), "tuned per seed")
    assert quick.get_suptitle().splitlines()[1] == (
        "QUICK smoke run (numbers not evidence): seeds 0,1 pooled, 240 test problems per seed, 16 answers each")
    # pooled over 2 seeds the run has 480 test problems: every curve here (240) is then a subset, and says so
    assert all(t.get_text().endswith("(240-problem subset)") for t in quick.axes[0].get_legend().get_texts()[:2])


def test_the_lucky_sentence_says_how_the_train_labels_read_lucky_answers():
    quality = {"all": {"records": 100, "first_error_agreement": 0.85, "step_label_accuracy": 0.86},
               "lucky": {"records": 12, "first_error_agreement": 0.0, "step_label_accuracy": 0.0},
               "rest": {"records": 88, "first_error_agreement": 0.97, "step_label_accuracy": 0.99}}
    world = {"count_add": {"lucky": 0.7}, "all": {"lucky": 0.4}}
    r = {"world": {"base": world}, "labelling": {"train_labels": {"vs_oracle": quality}}}
    text = report.lucky_text(r)
    assert "share 0.40 are *lucky*" in text and "count_add 0.70" in text
    assert "12 of the 100 labelled train solutions are lucky" in text and "on 0.00 of them (on the rest: 0.97)" in text
    assert "lucky (a right answer after a wrong step) (12 solutions): first error as the oracle's 0.000" in \
        report.train_labels_text(quality)
    assert "the tree search" not in report.lucky_text({"world": {"base": world}})  # a run without the measure
