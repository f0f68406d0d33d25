"""The paper's deletion benchmark (Ginart et al. 2019, Sec. 4), on the sets that install offline.

Protocol, per dataset: train on all n points, then delete m (default 1000)
points drawn uniformly at random without replacement, ONE AT A TIME, each
followed by ``flush()`` so every deletion is paid for before the next one.
Amortized runtime per operation = (train + all m deletions) / (1 + m): the
paper's amortized runtime over a sequence of deletions, training included.
Speedups are ratios of totals over the same m, so the divisor cancels.
Each model's compiled kernels are loaded first (``warm_up`` with its
parameters, as a worker does before it reports ready): numba compiles a DC
tree's path refit per tree depth, seconds that once landed inside the
timed deletions of a fresh checkout.

Baselines, measured in the same run:
- ``KMeans`` (ours): exact k-means++ / Lloyd, refit on every delete. A refit
  costs a full fit, so m of them are NOT run: a few deletions are timed one at
  a time (delete + flush = refit) and the rest extrapolated (the output says
  so); the final model is refit once on the survivors, for the loss baseline.
- scikit-learn ``KMeans(n_init=1, init='k-means++', max_iter=<ours>, tol=0)``,
  refit from scratch on the survivors after a delete; a few refits timed and
  extrapolated the same way. ``tol=0`` because ours stops only at an exact
  fixpoint or ``max_iter``; sklearn with tol=0 likewise stops when labels no
  longer change, or at ``max_iter``.

Features are z-scored (see ``datasets.py``); QKMeans ``eps`` is in those units.
Loss = mean squared distance to the nearest centroid over the survivors;
ratio is against our KMeans refit on the same survivors (k-means++ + Lloyd).
One seed's ratio swings with k-means++'s luck (Shuttle, seed 0 to 5: Q
1.006-1.071 against the same KMeans seeds), so the ratio is of means over
``--loss-seeds`` seeds: the deletion run's model for ``--seed``, and for each
further seed a fresh fit on the survivors, which the exact-unlearning
contract makes bit-identical to that seed's model after the same deletions.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable

import numpy as np
from _common import environment, mean_sq_loss, now, pct, table, verdict
from datasets import LOADERS, DatasetMissing, load

from stream_unlearn import DCKMeans, KMeans, QKMeans
from stream_unlearn.base import UnlearningModel
from stream_unlearn.warmup import warm_up

QUICK_N = 4000
# QKMeans eps per dataset (z-score units), from sweeps trading the certificate pass rate against the loss
# ratio, which must stay under the 1.05 target with room (bench/README.md); --eps overrides all of them.
DEFAULT_EPS = {"gaussian": 0.1, "shuttle": 0.15, "letter": 0.3, "fashion": 0.5}
# QKMeans Lloyd updates at most, per dataset (10 elsewhere): each update is one more snapped centroid a
# deletion can move, so fewer updates certify more deletions and refit cheaper, at some loss (bench/README.md).
DEFAULT_Q_ITER = {"letter": 6}
QUICK_DELETIONS = 40


#: Refits of a baseline timed while their total stays under this many seconds (and at most
#: MAX_TIMED_REFITS): two refits of a cheap baseline varied 35-80 ms on this shared box, and a
#: 100x verdict rests on their median.
REFIT_BUDGET = 2.0
MAX_TIMED_REFITS = 9


def more_refits(timed: list[float], at_least: int, args: argparse.Namespace) -> bool:
    """Whether to time another baseline refit: until ``at_least``, then while cheap (``--refit-budget``)."""
    if len(timed) < at_least:
        return True
    return len(timed) < MAX_TIMED_REFITS and sum(timed) < args.refit_budget


def _nmi(y: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(y, labels))


def run_dataset(name: str, args: argparse.Namespace) -> list[dict] | None:
    try:
        X, y, k = load(name, n=QUICK_N if args.quick else None)
    except DatasetMissing as exc:
        print(f"[{name}] skipped: {exc}", flush=True)
        return None
    n, d = X.shape
    m = min(args.deletions, n // 2)
    rng = np.random.default_rng(args.seed)
    order = rng.choice(n, m, replace=False)
    alive = np.ones(n, dtype=bool)
    alive[order] = False
    Xs, ys = X[alive], y[alive]
    ids = np.arange(n)
    base = {"dataset": name, "n": n, "d": d, "k": k}
    rows: list[dict] = []
    print(f"[{name}] n={n} d={d} k={k}, {m} deletions", flush=True)

    # -- our KMeans: exact refit on every delete (extrapolated) -------------------------
    warm_up(KMeans.algorithm, k, max_iter=args.max_iter)  # compiled kernels loaded first, as a worker does
    km = KMeans(k=k, seed=args.seed, max_iter=args.max_iter)
    t = now()
    km.insert(ids, X)
    km.flush()
    km_train = now() - t
    km_del: list[float] = []
    for i in order:
        if not more_refits(km_del, args.retrains, args):
            break
        t = now()
        km.delete([i])
        km.flush()
        km_del.append(now() - t)
    r = len(km_del)
    km.delete(order[r:])
    km.flush()
    km_loss = km.loss()
    km_total = km_train + m * float(np.median(km_del))
    rows.append({**base, "method": f"KMeans refit (x{r} timed, rest extrap.)", "train": km_train,
                 "del_p50": pct(km_del, 50) * 1e3, "amort": km_total / (1 + m), "total": km_total,
                 "loss": km_loss, "loss_ratio": 1.0, "nmi": _nmi(ys, km.predict(Xs)),
                 "iters": km.n_iter_})
    print(f"  KMeans: train {km_train:.2f}s ({km.n_iter_} Lloyd updates on survivors), "
          f"refit p50 {pct(km_del, 50):.3f}s", flush=True)
    del km
    gc.collect()

    # -- scikit-learn refit (extrapolated) ------------------------------------------------
    from sklearn.cluster import KMeans as SKMeans

    def sk_fit(data: np.ndarray, seed: int = args.seed) -> SKMeans:
        return SKMeans(n_clusters=k, n_init=1, init="k-means++", max_iter=args.max_iter, tol=0.0,
                       random_state=seed).fit(data)

    t = now()
    sk_fit(X)
    sk_train = now() - t
    sk_del: list[float] = []
    mask = np.ones(n, dtype=bool)
    for i in order:
        if not more_refits(sk_del, args.sk_refits, args):
            break
        mask[i] = False
        t = now()
        sk_fit(X[mask])
        sk_del.append(now() - t)
    sk = sk_fit(Xs)
    sk_total = sk_train + m * float(np.median(sk_del))
    sk_loss = mean_sq_loss(Xs, sk.cluster_centers_)
    rows.append({**base, "method": f"sklearn refit (x{len(sk_del)} timed, rest extrap.)", "train": sk_train,
                 "del_p50": pct(sk_del, 50) * 1e3, "amort": sk_total / (1 + m), "total": sk_total,
                 "loss": sk_loss, "loss_ratio": sk_loss / km_loss, "nmi": _nmi(ys, sk.labels_),
                 "iters": int(sk.n_iter_)})
    print(f"  sklearn: train {sk_train:.3f}s, refit p50 {pct(sk_del, 50):.3f}s ({sk.n_iter_} iters)", flush=True)

    # -- the deletion-efficient models: every deletion paid -------------------------------
    eps = args.eps if args.eps is not None else DEFAULT_EPS.get(name, 0.2)
    q_iter = args.q_iter if args.q_iter is not None else DEFAULT_Q_ITER.get(name, 10)
    configs: dict[str, tuple[type[UnlearningModel], dict]] = {
        f"QKMeans eps={eps:g} T={q_iter}": (QKMeans, {"eps": eps, "max_iter": q_iter}),
        f"DCKMeans w={args.leaves}": (DCKMeans,
                                      {"n_leaves": args.leaves, "fanout": args.fanout, "node_k": args.node_k}),
    }

    def maker(cls: type[UnlearningModel], params: dict) -> Callable[[int], UnlearningModel]:
        return lambda seed: cls(k=k, seed=seed, **params)

    makers = {label: maker(cls, params) for label, (cls, params) in configs.items()}
    for label, make in makers.items():
        cls, params = configs[label]
        warm_up(cls.algorithm, k, **params)  # a DC tree's path refit compiles per depth: not inside the timing
        model = make(args.seed)
        t = now()
        model.insert(ids, X)
        model.flush()
        train = now() - t
        times = []
        start = now()
        for i in order:
            t = now()
            model.delete([i])
            model.flush()
            times.append(now() - t)
            if now() - start > args.budget and len(times) < m:
                break
        run = len(times)
        if run < m:  # over budget: the rest in one untimed batch, their cost extrapolated
            model.delete(order[run:])
            model.flush()
            label += f" ({run} of {m} run, rest extrap.)"
        total = train + float(np.sum(times)) * m / run
        loss = model.loss()
        row = {**base, "method": label, "train": train, "del_p50": pct(times, 50) * 1e3,
               "del_p99": pct(times, 99) * 1e3, "amort": total / (1 + m), "total": total, "loss": loss,
               "loss_ratio": loss / km_loss, "nmi": _nmi(ys, model.predict(Xs)),
               "speedup": km_total / total, "speedup_sk": sk_total / total}
        if isinstance(model, QKMeans):
            row["pass_rate"] = model.certificate_pass_rate_
            row["refits"] = model.refits_ - 1
        t = now()
        row["verify"] = model.verify()
        print(f"  {label}: train {train:.2f}s, deletes p50 {row['del_p50']:.3f}ms p99 {row['del_p99']:.1f}ms, "
              f"total {total:.1f}s, verify {row['verify']} ({now() - t:.1f}s)", flush=True)
        rows.append(row)
        del model
        gc.collect()

    # -- loss over seeds: fresh fits on the survivors stand for the other seeds' deletion runs --
    survivor_ids = ids[alive]  # the ids place points (canonical order, DC leaves): the survivors keep theirs

    def fresh_fit_loss(make: Callable[[int], UnlearningModel]) -> Callable[[int], float]:
        def loss(seed: int) -> float:
            model = make(seed)
            model.insert(survivor_ids, Xs)
            return model.loss()
        return loss

    loss_for_seed = [  # the rows' order
        fresh_fit_loss(lambda seed: KMeans(k=k, seed=seed, max_iter=args.max_iter)),
        lambda seed: mean_sq_loss(Xs, sk_fit(Xs, seed).cluster_centers_),
        *(fresh_fit_loss(make) for make in makers.values()),
    ]
    for row in rows:
        row["losses"] = [row["loss"]]
    for seed in range(args.seed + 1, args.seed + args.loss_seeds):
        for row, loss in zip(rows, loss_for_seed):
            row["losses"].append(loss(seed))
    km_mean = float(np.mean(rows[0]["losses"]))
    for row in rows:
        row["loss_ratio_s0"] = row["loss_ratio"]
        row["loss_ratio"] = float(np.mean(row["losses"])) / km_mean
    if args.loss_seeds > 1:
        print(f"  loss ratio, mean of {args.loss_seeds} seeds (seed {args.seed} alone): "
              + ", ".join(f"{r['method'].split(' (')[0]} {r['loss_ratio']:.3f} ({r['loss_ratio_s0']:.3f})"
                          for r in rows[1:]), flush=True)
    return rows


COLUMNS = [
    ("dataset", "dataset"), ("n", "n"), ("d", "d"), ("k", "k"), ("method", "method"),
    ("train", "train s"), ("del_p50", "del p50 ms"), ("amort", "amort s/op"),
    ("speedup", "speedup vs ours"), ("speedup_sk", "vs sklearn"), ("loss_ratio", "loss ratio"), ("loss_ratio_s0", "1 seed"),
    ("nmi", "NMI"), ("pass_rate", "Q pass"), ("verify", "verify"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(LOADERS), help="comma list (default %(default)s)")
    parser.add_argument("--deletions", type=int, default=1000, help="deletions per dataset (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: n<={QUICK_N}, {QUICK_DELETIONS} deletions")
    parser.add_argument("--eps", type=float, default=None,
                        help=f"QKMeans eps for every dataset, z-score units (default per dataset: {DEFAULT_EPS})")
    parser.add_argument("--q-iter", type=int, default=None,
                        help=f"QKMeans Lloyd iterations at most, every dataset (default per dataset: {DEFAULT_Q_ITER}, else 10)")
    defaults = DCKMeans().get_params()
    parser.add_argument("--leaves", type=int, default=defaults["n_leaves"], help="DCKMeans leaves (default %(default)s)")
    parser.add_argument("--fanout", type=int, default=None, help="DCKMeans fanout (default: by k and leaves, see DCKMeans)")
    parser.add_argument("--node-k", type=int, default=None,
                        help="DCKMeans centres per internal node below the top "
                             "(default k: every node solves k-means; e.g. 2k: summaries)")
    parser.add_argument("--max-iter", type=int, default=100, help="KMeans/sklearn max_iter (default %(default)s)")
    parser.add_argument("--retrains", type=int, default=2,
                        help="our KMeans refits timed at least (default %(default)s); more while they are cheap")
    parser.add_argument("--sk-refits", type=int, default=5,
                        help="sklearn refits timed at least (default %(default)s); more while they are cheap")
    parser.add_argument("--refit-budget", type=float, default=REFIT_BUDGET,
                        help=f"time more refits (up to {MAX_TIMED_REFITS}) while their total is under this many "
                             "seconds: the baselines' medians decide the speedups (default %(default)s)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds of deletions per model and dataset; past it the rest are extrapolated "
                             "from the mean so far and the output says so (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-seeds", type=int, default=5,
                        help="seeds the loss ratio is averaged over: --seed's deletion run, then fresh fits on the "
                             "survivors (default %(default)s)")
    args = parser.parse_args(argv)
    if args.loss_seeds < 1:
        parser.error("--loss-seeds must be at least 1")
    if args.quick:
        args.deletions = min(args.deletions, QUICK_DELETIONS)
        args.retrains = min(args.retrains, 2)
        args.sk_refits = min(args.sk_refits, 3)
        args.refit_budget = 0.0
        args.loss_seeds = min(args.loss_seeds, 2)
    names = [s.strip() for s in args.datasets.split(",") if s.strip()]
    unknown = [s for s in names if s not in LOADERS]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {list(LOADERS)}")
    print(f"# paper_table: {environment()}", flush=True)
    rows: list[dict] = []
    for name in names:
        got = run_dataset(name, args)
        if got:
            rows.extend(got)
    if not rows:
        print("no dataset could be loaded", file=sys.stderr)
        return 1

    print()
    print(f"Amortized runtime per operation = (train + {args.deletions if not args.quick else 'm'} deletions, each "
          "flushed) / (1 + deletions). Retraining rows are extrapolated from the timed refits named in the method "
          "column. sklearn: KMeans(n_init=1, init='k-means++', "
          f"max_iter={args.max_iter}, tol=0). QKMeans eps (method column) in z-score units, T = Lloyd iterations at most, "
          "Q pass = share of certificates that passed (the rest refit); "
          f"DCKMeans n_leaves={args.leaves}, fanout {args.fanout or 'by k'}, node_k {args.node_k or 'k'}, max_iter 10. Loss ratio: mean squared distance on the "
          f"survivors / our KMeans refit on the survivors, each the mean over {args.loss_seeds} seeds (seed "
          f"{args.seed}: the models above; the others: fresh fits on the survivors); '1 seed' = seed {args.seed}'s ratio alone.")
    print(table(rows, COLUMNS))
    print()
    print("Targets (paper: >= 100x amortized vs retraining on every dataset, loss comparable to k-means++):")
    for label in ("QKMeans", "DCKMeans"):
        mine = [r for r in rows if r["method"].startswith(label)]
        if not mine:
            continue
        worst = min(mine, key=lambda r: r["speedup"])
        worst_sk = min(mine, key=lambda r: r["speedup_sk"])
        worst_loss = max(mine, key=lambda r: r["loss_ratio"])
        checks = [
            ("amortized >= 100x vs our retraining on every dataset",
             f"{verdict(worst['speedup'] >= 100)} (min {worst['speedup']:.1f}x on {worst['dataset']})"),
            ("amortized >= 100x vs sklearn refit on every dataset",
             f"{verdict(worst_sk['speedup_sk'] >= 100)} (min {worst_sk['speedup_sk']:.1f}x on {worst_sk['dataset']})"),
            (f"loss ratio <= 1.05 on every dataset (mean of {args.loss_seeds} seeds)",
             f"{verdict(worst_loss['loss_ratio'] <= 1.05)} (max {worst_loss['loss_ratio']:.3f} on {worst_loss['dataset']})"),
            ("verify() after the deletions on every dataset", verdict(all(r["verify"] for r in mine))),
        ]
        for text, outcome in checks:
            print(f"  {label:9s} {text + ':':64s} {outcome}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
