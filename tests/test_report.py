"""report.py: update_readme replaces only the block between the bench markers, with the headline tables written
exactly as the literal results say; the shipped README's block is what results/results.json renders."""
import json
from pathlib import Path

import pytest

import bench
import report

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
ROWS = ["random", "majority", "weighted_prm", "orm", "prm_min", "prm_mean", "prm_last2", "judge_orm", "judge_prm",
        "oracle"]


def literal_results():
    """Every cell distinct: method i, part and N -> (i + 1) / 100 + 0.1 per N step + 0.3 per part."""
    bon = {part: {m: {n: (i + 1) / 100 + dn + dp for n, dn in (("1", 0.0), ("4", 0.1), ("16", 0.2))}
                  for i, m in enumerate(ROWS)} for part, dp in (("all", 0.0), ("visual", 0.3), ("text", 0.6))}
    step = {m: {"first_error_f1": f} for m, f in (("prm", 0.798), ("orm", 0.682), ("judge_prm", 0.414),
                                                  ("prm_blank", 0.491), ("prior", 0.303), ("base_likelihood", 0.9))}
    auc = lambda a, b, c: {"perception": a, "visual_arith": b, "text_arith": c}  # noqa: E731
    fresh = {"prm": auc(0.79, 0.856, 0.95), "orm_steps": auc(0.701, 0.741, 0.922), "prm_blank": auc(0.488, 0.5, 0.907),
             "prior": auc(0.518, 0.573, 0.571), "base_likelihood": auc(0.917, 1.0, 1.0)}
    return {"bon": bon, "step": step, "controls": {"fresh_auc": fresh}, "seconds": 606.0}


def test_update_readme_replaces_only_the_block(tmp_path):
    head = "# A project\n\nIntro text.\n\n## Results\n\n"
    tail = "\n\n### Reading\n\nText after the block, kept as it is.\n"
    readme = tmp_path / "README.md"
    readme.write_text(head + START + "\nan old table\n| x | 1 |\n" + END + tail)
    a = bench.Args(out="out/somewhere")
    report.update_readme(literal_results(), a, path=readme)
    text = readme.read_text()
    assert text.startswith(head + START + "\n") and text.endswith(END + tail)
    assert text.count(START) == text.count(END) == 1 and "an old table" not in text
    block = text[len(head + START + "\n"):-len(END + tail)].splitlines()
    assert block[0].startswith("`python bench.py` (seed 0): 10.1 minutes on ")
    assert "fine-tuned 1200 steps from the tiny base on mcts labels of 2000 train problems" in block[0]
    assert "(a copy of `out/somewhere/report.md`" in block[0]
    cols = [f"{p} N={n}" for p in ("all", "visual", "text") for n in ("1", "4", "16")]
    assert block[2:15] == [
        "Best-of-N accuracy (mean over random subsets of the pool of 16):", "",
        "| | " + " | ".join(cols) + " |", "|---|" + "---:|" * 9,
        "| random | 0.010 | 0.110 | 0.210 | 0.310 | 0.410 | 0.510 | 0.610 | 0.710 | 0.810 |",
        "| majority | 0.020 | 0.120 | 0.220 | 0.320 | 0.420 | 0.520 | 0.620 | 0.720 | 0.820 |",
        "| weighted_prm | 0.030 | 0.130 | 0.230 | 0.330 | 0.430 | 0.530 | 0.630 | 0.730 | 0.830 |",
        "| orm | 0.040 | 0.140 | 0.240 | 0.340 | 0.440 | 0.540 | 0.640 | 0.740 | 0.840 |",
        "| prm_min | 0.050 | 0.150 | 0.250 | 0.350 | 0.450 | 0.550 | 0.650 | 0.750 | 0.850 |",
        "| prm_mean | 0.060 | 0.160 | 0.260 | 0.360 | 0.460 | 0.560 | 0.660 | 0.760 | 0.860 |",
        "| prm_last2 | 0.070 | 0.170 | 0.270 | 0.370 | 0.470 | 0.570 | 0.670 | 0.770 | 0.870 |",
        "| judge_orm | 0.080 | 0.180 | 0.280 | 0.380 | 0.480 | 0.580 | 0.680 | 0.780 | 0.880 |",
        "| judge_prm | 0.090 | 0.190 | 0.290 | 0.390 | 0.490 | 0.590 | 0.690 | 0.790 | 0.890 |"]
    assert block[15] == "| oracle | 0.100 | 0.200 | 0.300 | 0.400 | 0.500 | 0.600 | 0.700 | 0.800 | 0.900 |"
    assert block[19:] == [
        "| | F1 | perception AUC | visual arith AUC | text arith AUC |", "|---|---:|---:|---:|---:|",
        "| prm | 0.798 | 0.790 | 0.856 | 0.950 |",
        "| orm | 0.682 | 0.701 | 0.741 | 0.922 |",  # the ORM read at every tag
        "| judge_prm | 0.414 | - | - | - |",  # no AUC for the judge
        "| prm_blank | 0.491 | 0.488 | 0.500 | 0.907 |",
        "| prior | 0.303 | 0.518 | 0.573 | 0.571 |",
        "| base_likelihood | 0.900 | 0.917 | 1.000 | 1.000 |", ""]
    report.update_readme(literal_results(), a, path=readme)  # a second run writes the same file
    assert readme.read_text() == text


def test_update_readme_without_markers_refuses_and_writes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# A project\n" + START + "\nno end marker\n")
    with pytest.raises(SystemExit, match="no <!-- bench:start --> ... <!-- bench:end --> block"):
        report.update_readme(literal_results(), bench.Args(), path=readme)
    assert readme.read_text() == "# A project\n" + START + "\nno end marker\n"


def test_the_readme_block_is_what_the_shipped_results_render(tmp_path):
    r = json.loads((ROOT / "results" / "results.json").read_text())
    copy = tmp_path / "README.md"
    copy.write_text((ROOT / "README.md").read_text())
    report.update_readme(r, bench.Args(**r["config"]), path=copy)
    block = lambda t: t.split(START)[1].split(END)[0].splitlines()[2:]  # noqa: E731  (line 1: machine, torch)
    assert block(copy.read_text()) == block((ROOT / "README.md").read_text())
