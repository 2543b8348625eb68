"""Metrics, one home for train.py, bon.py and bench.py: ROC AUC, ProcessBench's first-error F1, the threshold chosen
on a dev split; and the statistics of evidence: bootstrap intervals over problems (or clusters of problems that
share content), paired and unpaired differences, verdicts. Checked on literal inputs in tests/test_metrics.py.

    first-error F1 (Zheng et al. 2024, ProcessBench): a solution's predicted first error is its first step scored
    below a threshold; F1 is the harmonic mean of the accuracy on erroneous solutions (the predicted first error is
    the true one) and on correct solutions (no error predicted).
"""
import itertools

import numpy as np


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


def f1_of_predictions(pred, true):
    """first_error_f1 from predicted first errors directly (one per solution; -1: none predicted)."""
    err = [p == t for p, t in zip(pred, true) if t != -1]
    ok = [p == -1 for p, t in zip(pred, true) if t == -1]
    accs = [sum(x) / len(x) for x in (err, ok) if x]
    return 0.0 if not accs or 0 in accs else len(accs) / sum(1 / a for a in accs)


def choose_threshold(dev_scores, dev_first_errors, grid=None):
    """The step-score threshold with the best first-error F1 on a dev split, from `grid` (default 0.01 .. 0.99).
    Several best: their median (the lower middle), i.e. the centre of the best range, not its edge."""
    grid = grid or [i / 100 for i in range(1, 100)]
    f1s = [first_error_f1(dev_scores, dev_first_errors, t)["f1"] for t in grid]
    best = [t for t, f in zip(grid, f1s) if f == max(f1s)]
    return best[(len(best) - 1) // 2]


def dev_test_f1(dev_scores, dev_first_errors, test_scores, test_first_errors):
    """The threshold chosen on dev, the first-error F1 measured on test: {"first_error_f1", "threshold",
    "acc_error", "acc_correct", "dev", "test"} (dev/test: solutions in each)."""
    t = choose_threshold(dev_scores, dev_first_errors)
    r = first_error_f1(test_scores, test_first_errors, t)
    return {"first_error_f1": r["f1"], "threshold": t, "acc_error": r["acc_error"], "acc_correct": r["acc_correct"],
            "dev": len(dev_scores),
            "test": len(test_scores)}


# Uncertainty (docs/DESIGN.md "Evidence"): a percentile bootstrap over test problems, or over clusters of problems that
# share content (a content repeats inside a split that has fewer contents than problems; its problems are not
# independent). The resampled clusters depend only on the cluster keys and the seed, so every comparison over the
# same problems is paired draw by draw.
BOOT, LEVEL = 2000, 0.95
# Below this many independent clusters (contents) an interval says little and a verdict would mislead: the mean is
# still reported, but no interval and no verdict ("too few").
MIN_CLUSTERS = 30


def cluster_index(keys):
    """(cluster number per item, number of clusters): items with the same key share a number."""
    at = {c: i for i, c in enumerate(sorted(set(keys), key=str))}
    return np.array([at[k] for k in keys], dtype=int), len(at)


def n_clusters(n, clusters=None):
    return n if clusters is None else len(set(clusters))


def boot_means(values, clusters=None, boot=BOOT, seed=0):
    """(boot,) bootstrap replicates of the mean of per-problem values: each draws clusters with replacement (None:
    each value its own cluster) and averages over the problems they hold."""
    v = np.asarray(values, dtype=float)
    cl, K = cluster_index(list(range(len(v))) if clusters is None else list(clusters))
    draws = np.random.default_rng(seed).integers(0, K, (boot, K))
    return np.bincount(cl, v, K)[draws].sum(1) / np.bincount(cl, None, K)[draws].sum(1)


def interval(mean, reps, n, level=LEVEL, clusters=None, adjusted=None):
    """{"mean", "lo", "hi", "n", "clusters"}: the percentile interval of the replicates at `level`; with `adjusted`
    (a higher level: Bonferroni's 1 - (1 - level) / m for m comparisons) also "lo_adj", "hi_adj". Fewer than
    MIN_CLUSTERS clusters: no interval, "too_few"."""
    k = n if clusters is None else clusters
    out = {"mean": float(mean), "lo": None, "hi": None, "n": int(n), "clusters": int(k)}
    if k < MIN_CLUSTERS:
        return {**out, "too_few": True}
    out["lo"], out["hi"] = (float(x) for x in np.quantile(reps, [(1 - level) / 2, (1 + level) / 2]))
    if adjusted is not None:
        out["lo_adj"], out["hi_adj"] = (float(x) for x in np.quantile(reps, [(1 - adjusted) / 2, (1 + adjusted) / 2]))
    return out


EMPTY = {"mean": None, "lo": None, "hi": None, "n": 0, "clusters": 0}


def bootstrap(values, clusters=None, boot=BOOT, seed=0, level=LEVEL, adjusted=None):
    """Mean of per-problem values with its percentile bootstrap interval -> interval()'s dict."""
    if len(values) == 0:
        return dict(EMPTY)
    reps = boot_means(values, clusters, boot, seed)
    return interval(np.mean(values), reps, len(values), level, n_clusters(len(values), clusters), adjusted)


def paired(a, b, clusters=None, boot=BOOT, seed=0, level=LEVEL, adjusted=None):
    """a - b paired per problem (the same problems in the same order): mean difference and its interval."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison over {len(a)} and {len(b)} problems: not the same problems")
    return bootstrap([x - y for x, y in zip(a, b)], clusters, boot, seed, level, adjusted)


def unpaired(a, b, clusters_a=None, clusters_b=None, boot=BOOT, seed=0, level=LEVEL, adjusted=None):
    """mean(a) - mean(b) over two different sets of problems (text gains minus visual gains): each resampled on its
    own. Its clusters: the smaller side's (each side needs enough of its own)."""
    if not len(a) or not len(b):
        return dict(EMPTY)
    reps = boot_means(a, clusters_a, boot, seed) - boot_means(b, clusters_b, boot, seed + 1)
    k = min(n_clusters(len(a), clusters_a), n_clusters(len(b), clusters_b))
    return interval(np.mean(a) - np.mean(b), reps, len(a) + len(b), level, k, adjusted)


def verdict(ci, direction=1, adjusted=False):
    """"holds" when the interval excludes 0 on the side of `direction` (+1: a > b expected), "opposite" when it
    excludes 0 on the other side, "not resolved" otherwise; "too few" below MIN_CLUSTERS clusters. adjusted: read
    the multiplicity-adjusted interval (lo_adj, hi_adj) instead."""
    if ci.get("too_few"):
        return "too few"
    lo, hi = (ci.get("lo_adj"), ci.get("hi_adj")) if adjusted else (ci.get("lo"), ci.get("hi"))
    if lo is None:
        return "not resolved"
    if (lo > 0 and direction > 0) or (hi < 0 and direction < 0):
        return "holds"
    return "opposite" if lo > 0 or hi < 0 else "not resolved"


def first_error_f1_ci(pred, true, clusters=None, boot=BOOT, seed=0, level=LEVEL, pred_b=None, adjusted=None):
    """ProcessBench F1 from predicted and true first errors (one per solution) with its bootstrap interval: the two
    accuracies are sums over the resampled clusters, so each replicate is exact, not an average of F1s. With pred_b
    (another method's predictions on the same solutions): the paired difference F1(pred) - F1(pred_b)."""
    true = np.asarray(true)
    cl, K = cluster_index(list(range(len(true))) if clusters is None else list(clusters))
    draws = np.random.default_rng(seed).integers(0, K, (boot, K))

    def sums(p):
        err, hit = true != -1, np.asarray(p) == true
        return [np.bincount(cl, w.astype(float), K) for w in (hit & err, err, hit & ~err, ~err)]

    def f1(he, ne, ho, no):
        accs = [x for x in ((he / ne) if ne else None, (ho / no) if no else None) if x is not None]
        return 0.0 if not accs or 0 in accs else len(accs) / sum(1 / x for x in accs)
    sa, sb = sums(pred), sums(pred_b) if pred_b is not None else None

    def full(ss):
        return f1(*(s.sum() for s in ss))

    def rep(ss, d):  # one bootstrap replicate: the clusters drawn in d
        return f1(*(s[d].sum() for s in ss))
    if sb is not None:
        return interval(full(sa) - full(sb), [rep(sa, d) - rep(sb, d) for d in draws], len(true), level, K, adjusted)
    he, ne, ho, no = (s.sum() for s in sa)
    return {**interval(full(sa), [rep(sa, d) for d in draws], len(true), level, K, adjusted),
            "acc_error": float(he / ne) if ne else None, "acc_correct": float(ho / no) if no else None}


def auc_fast(scores, labels):
    """ROC AUC by ranks (ties count half), numpy: the same number as auc()."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return 0.5
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inv]  # average rank of each tie group, 1-based
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auc_ci(scores, labels, clusters=None, boot=500, seed=0, level=LEVEL):
    """ROC AUC with a bootstrap interval over clusters (fewer replicates: each one sorts the resampled steps)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if y.all() or not y.any():  # one class: no pair to rank, an AUC of 0.5 would read as measured
        return {**EMPTY, "n": len(s), "one_class": True}
    keys = list(range(len(s))) if clusters is None else list(clusters)
    members = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    groups = [np.array(v) for v in members.values()]
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(boot):
        idx = np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))])
        reps.append(auc_fast(s[idx], y[idx]))
    return interval(auc_fast(s, y), reps, len(s), level, len(groups))
