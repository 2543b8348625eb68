"""metrics.py on literal inputs with exact expected values: AUC, the predicted first error, ProcessBench's
first-error F1, the threshold chosen on dev, and dev_test_f1 (threshold from dev, F1 on test); the unpaired
difference (bootstrap, paired and verdict: tests/test_evidence.py)."""
import numpy as np
import pytest

from common import metrics
from common.metrics import auc, choose_threshold, dev_test_f1, first_error_f1, predicted_first_error


def test_auc_on_literal_inputs():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([0.5, 0.5], [1, 0]) == 0.5  # a tie counts half
    assert auc([0.5, 0.5, 0.9], [0, 1, 1]) == 0.75  # (0.5 + 1) / 2
    assert auc([0.2, 0.9], [True, False]) == 0.0
    assert auc([0.1, 0.2], [1, 1]) == 0.5 and auc([], []) == 0.5  # one class, no class
    # 3 positives x 2 negatives: pairs won 0.9>0.3, 0.9>0.6, 0.6=0.6 (half), 0.6>0.3, 0.3=0.3 (half) -> 4 / 6
    assert auc([0.9, 0.6, 0.3, 0.6, 0.3], [1, 1, 1, 0, 0]) == pytest.approx(4 / 6, abs=1e-15)


def test_predicted_first_error_is_the_first_step_below_the_threshold():
    assert predicted_first_error([0.7, 0.6, 0.2, 0.1], 0.65) == 1
    assert predicted_first_error([0.7, 0.6], 0.6) == -1  # "below": a score equal to the threshold passes
    assert predicted_first_error([0.1], 0.5) == 0 and predicted_first_error([], 0.5) == -1


def test_first_error_f1_on_hand_cases():
    scores = [[0.9, 0.2, 0.8], [0.9, 0.9], [0.3, 0.9], [0.9, 0.4]]
    truth = [1, -1, 1, -1]  # predicted at 0.5: 1 (right), -1 (right), 0 (wrong step), 1 (false alarm)
    assert first_error_f1(scores, truth, 0.5) == {"f1": pytest.approx(0.5), "acc_error": 0.5, "acc_correct": 0.5}
    assert first_error_f1(scores, truth, 0.1) == {"f1": 0.0, "acc_error": 0.0, "acc_correct": 1.0}
    # unequal accuracies: the harmonic mean, 2 * 1 * (1/3) / (1 + 1/3) = 0.5
    r = first_error_f1([[0.9, 0.1], [0.1], [0.4, 0.9], [0.9, 0.4], [0.9]], [1, 0, -1, -1, -1], 0.5)
    assert r == {"f1": pytest.approx(0.5), "acc_error": 1.0, "acc_correct": pytest.approx(1 / 3)}
    # only right solutions: the F1 is the accuracy on them; only wrong ones: the accuracy on those
    assert first_error_f1([[0.9], [0.4, 0.9]], [-1, -1], 0.5) == {"f1": 0.5, "acc_error": None, "acc_correct": 0.5}
    assert first_error_f1([[0.9, 0.1]], [1], 0.5) == {"f1": 1.0, "acc_error": 1.0, "acc_correct": None}
    assert first_error_f1([], [], 0.5) == {"f1": 0.0, "acc_error": None, "acc_correct": None}


def test_threshold_is_the_centre_of_the_separating_range():
    # right steps score 0.8, wrong ones 0.3: every threshold in (0.3, 0.8] is perfect; the grid's middle is 0.55
    dev = [[0.8, 0.8, 0.3], [0.8, 0.8], [0.3, 0.8], [0.8]]
    fe = [2, -1, 0, -1]
    assert choose_threshold(dev, fe) == 0.55
    assert first_error_f1(dev, fe, 0.55)["f1"] == 1.0
    assert choose_threshold(dev, fe, grid=[0.1, 0.2, 0.9]) == 0.2  # all three give F1 = 0: the middle one
    assert choose_threshold(dev, fe, grid=[0.1, 0.5, 0.9]) == 0.5
    assert choose_threshold(dev, fe, grid=[0.1, 0.4, 0.5, 0.9]) == 0.4  # two best: the lower middle


def test_dev_test_f1_takes_the_threshold_from_dev_and_measures_on_test():
    dev = [[0.8, 0.8, 0.3], [0.8, 0.8], [0.3, 0.8], [0.8]]  # perfect for thresholds in (0.3, 0.8]: 0.55
    dev_fe = [2, -1, 0, -1]
    # on test at 0.55: [0.6, 0.5] -> 1 (right), [0.9, 0.7] -> -1 (right), [0.5] -> 0 but truly right (false alarm)
    test, test_fe = [[0.6, 0.5], [0.9, 0.7], [0.5]], [1, -1, -1]
    r = dev_test_f1(dev, dev_fe, test, test_fe)
    assert r == {"first_error_f1": pytest.approx(2 / 3), "threshold": 0.55, "acc_error": 1.0, "acc_correct": 0.5,
                 "dev": 4, "test": 3}
    # the threshold really comes from dev: a dev split that separates at 0.95 moves it, and the test F1 with it
    hi = dev_test_f1([[0.99, 0.9], [0.99]], [1, -1], test, test_fe)
    assert hi["threshold"] == 0.95 and hi["first_error_f1"] == 0.0 and hi["acc_correct"] == 0.0


def test_unpaired_difference_on_literal_inputs(monkeypatch):
    d = metrics.unpaired([1.0] * 30, [0.0] * 31)  # constant groups: every replicate is 1
    assert d == {"mean": 1.0, "lo": 1.0, "hi": 1.0, "n": 61, "clusters": 30} and metrics.verdict(d) == "holds"
    monkeypatch.setattr(metrics, "MIN_CLUSTERS", 1)  # the intervals of tiny literal samples, by hand
    d = metrics.unpaired([0.25, 0.75], [0.5, 0.5, 0.5, 0.5])
    assert d["mean"] == 0.0 and d["n"] == 6 and d["lo"] == -0.25 and d["hi"] == 0.25  # a: 0.25, 0.5 or 0.75
    assert metrics.unpaired([], [1.0]) == {"mean": None, "lo": None, "hi": None, "n": 0, "clusters": 0}
    assert metrics.verdict(metrics.unpaired([], [1.0])) == "not resolved"
    # the two groups are resampled apart: the same values give an interval around 0, where a paired difference of
    # a list with itself is exactly 0
    v = [0.0, 1.0] * 50
    u, p = metrics.unpaired(v, v), metrics.paired(v, v)
    assert (p["lo"], p["hi"]) == (0.0, 0.0) and u["lo"] < 0 < u["hi"] and metrics.verdict(u) == "not resolved"
    # its width: sqrt(0.25 / 100 * 2) = 0.0707 the standard error of a difference of two means of 100 coin flips
    assert 1.7 * 0.0707 < (u["hi"] - u["lo"]) / 2 < 2.2 * 0.0707
    # clusters: two clusters of identical values per group, resampled as wholes -> a wider interval
    wide = metrics.unpaired(v, v, [i % 2 for i in range(100)], [i % 2 for i in range(100)])
    assert wide["hi"] - wide["lo"] > 3 * (u["hi"] - u["lo"])


def test_too_few_contents_give_no_interval_and_no_verdict():
    one = metrics.bootstrap([0.5])
    assert one["mean"] == 0.5 and one["lo"] is None and one["too_few"] and metrics.verdict(one) == "too few"
    few = metrics.paired([1.0] * 40, [0.0] * 40, clusters=[i % 10 for i in range(40)])  # 40 problems, 10 contents
    assert few["clusters"] == 10 and few["lo"] is None and metrics.verdict(few) == "too few"
    enough = metrics.paired([1.0] * 40, [0.0] * 40)
    assert enough["clusters"] == 40 and metrics.verdict(enough) == "holds"


def test_the_adjusted_interval_is_wider_and_can_leave_a_difference_unresolved():
    rng = np.random.default_rng(0)
    diffs = list(rng.normal(0.25, 1.0, 60))  # its 95% interval clears 0, the adjusted one does not
    c = metrics.bootstrap(diffs, adjusted=1 - 0.05 / 16)
    assert c["lo_adj"] < c["lo"] < c["mean"] < c["hi"] < c["hi_adj"]
    assert metrics.verdict(c) == "holds" and metrics.verdict(c, adjusted=True) == "not resolved"


def test_auc_of_one_class_is_not_a_number():
    c = metrics.auc_ci([0.1, 0.9, 0.5], [True, True, True])
    assert c["mean"] is None and c["one_class"]
