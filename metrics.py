"""Step-level metrics, one home for train.py, bon.py and bench.py: ROC AUC, ProcessBench's first-error F1, and the
threshold chosen on a dev split. Pure Python, checked on literal inputs in tests/test_metrics.py.

    first-error F1 (Zheng et al. 2024, ProcessBench): a solution's predicted first error is its first step scored
    below a threshold; F1 is the harmonic mean of the accuracy on erroneous solutions (the predicted first error is
    the true one) and on correct solutions (no error predicted).
"""
import itertools


def auc(scores, labels):
    """ROC AUC: the chance a random positive scores above a random negative (ties count half). 0.5 if one class."""
    pos = sum(bool(y) for y in labels)
    if pos in (0, len(labels)):
        return 0.5
    wins, below = 0.0, 0  # below: negatives with a lower score than the current group
    for _, group in itertools.groupby(sorted(zip(scores, map(bool, labels))), key=lambda t: t[0]):
        ys = [y for _, y in group]
        wins += sum(ys) * (below + (len(ys) - sum(ys)) / 2)
        below += len(ys) - sum(ys)
    return wins / (pos * (len(labels) - pos))


def predicted_first_error(step_scores, threshold):
    """The first step whose score falls below the threshold, or -1 (ProcessBench's protocol)."""
    return next((i for i, s in enumerate(step_scores) if s < threshold), -1)


def first_error_f1(all_scores, true_first_errors, threshold):
    """ProcessBench F1: harmonic mean of the accuracy on erroneous solutions (the predicted first error must be the
    true one) and on correct solutions (no error predicted). A class with no solution has accuracy None and drops
    out: the F1 is then the other class's accuracy (0.0 with no solution at all)."""
    err = [predicted_first_error(s, threshold) == t for s, t in zip(all_scores, true_first_errors) if t != -1]
    ok = [predicted_first_error(s, threshold) == -1 for s, t in zip(all_scores, true_first_errors) if t == -1]
    acc_err = sum(err) / len(err) if err else None
    acc_ok = sum(ok) / len(ok) if ok else None
    accs = [a for a in (acc_err, acc_ok) if a is not None]
    f1 = 0.0 if not accs or 0 in accs else len(accs) / sum(1 / a for a in accs)
    return {"f1": f1, "acc_error": acc_err, "acc_correct": acc_ok}


def choose_threshold(dev_scores, dev_first_errors, grid=None):
    """The step-score threshold with the best first-error F1 on a dev split, from `grid` (default 0.01 .. 0.99).
    Several best: their median (the lower middle), i.e. the centre of the best range, not its edge."""
    grid = grid or [i / 100 for i in range(1, 100)]
    f1s = [first_error_f1(dev_scores, dev_first_errors, t)["f1"] for t in grid]
    best = [t for t, f in zip(grid, f1s) if f == max(f1s)]
    return best[(len(best) - 1) // 2]


def dev_test_f1(dev_scores, dev_first_errors, test_scores, test_first_errors):
    """The threshold chosen on dev, the first-error F1 measured on test: {"first_error_f1", "threshold",
    "acc_error", "acc_correct", "f1_at_0.5", "dev", "test"} (dev/test: solutions in each)."""
    t = choose_threshold(dev_scores, dev_first_errors)
    r = first_error_f1(test_scores, test_first_errors, t)
    return {"first_error_f1": r["f1"], "threshold": t, "acc_error": r["acc_error"], "acc_correct": r["acc_correct"],
            "f1_at_0.5": first_error_f1(test_scores, test_first_errors, 0.5)["f1"], "dev": len(dev_scores),
            "test": len(test_scores)}
