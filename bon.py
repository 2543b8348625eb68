"""Best-of-N selection and its metrics (selection rules arrive with the bench issue).

    python bon.py --help
"""


def auc(scores, labels):
    """ROC AUC: the chance a random positive scores above a random negative (ties count half). 0.5 if one class."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return 0.5
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks, i = [0.0] * len(scores), 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = sum(r for r, y in zip(ranks, labels) if y)
    return (r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def predicted_first_error(step_scores, threshold):
    """The first step whose score falls below the threshold, or -1 (ProcessBench's protocol)."""
    return next((i for i, s in enumerate(step_scores) if s < threshold), -1)


def first_error_f1(all_scores, true_first_errors, threshold):
    """ProcessBench F1: harmonic mean of the accuracy on erroneous solutions (the predicted first error must be the
    true one) and on correct solutions (no error predicted)."""
    err = [predicted_first_error(s, threshold) == t for s, t in zip(all_scores, true_first_errors) if t != -1]
    ok = [predicted_first_error(s, threshold) == -1 for s, t in zip(all_scores, true_first_errors) if t == -1]
    acc_err = sum(err) / len(err) if err else 0.0
    acc_ok = sum(ok) / len(ok) if ok else 0.0
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok else 0.0
    return {"f1": f1, "acc_error": acc_err, "acc_correct": acc_ok}
