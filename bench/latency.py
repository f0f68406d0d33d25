"""Per-event latency, batch throughput, fit time and memory of DCKMeans and QKMeans.

On the paper's Gaussian mixture (d=25, k=5, z-scored), at each size n:
- p50/p99 latency of ONE insert and of ONE delete, each followed by
  ``flush()`` (inserts of fresh ids and deletes of held ids alternate, so n
  stays put); QKMeans deletes are also split into certified ones (no refit)
  and the rest;
- scikit-learn ``KMeans(n_init=1, init='k-means++', max_iter=100)`` fit time on
  the same data in the same run, the baseline the delete speedups divide;
- at n=100k (or the size nearest it): mixed batches of 1000 events (10%
  deletes of held ids, 90% inserts of fresh ids), apply + flush, events/s;
  DCKMeans fit from scratch (compiled kernels loaded first, as a worker
  does before it reports ready) vs sklearn fit: the median ratio of
  ``--fit-pairs`` pairs run back to back, so both fits of a pair see the
  same load (sklearn's threaded fit alone varied 47-151 ms here, all at 2
  iterations); memory: the store's vector bytes
  vs raw n*d*8, and every byte Python allocated for the model (tracemalloc,
  traced while the model is built; the input array is allocated before).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np
from _common import environment, now, pct, table, verdict

from stream_unlearn import DCKMeans, QKMeans
from stream_unlearn.demo import gaussian_mixture
from stream_unlearn.warmup import warm_up

D, K = 25, 5


def mixture(n: int, seed: int) -> np.ndarray:
    """The paper's mixture, scaled with the mean/std of a fixed reference sample."""
    X, _ = gaussian_mixture(n, D, K, seed=0)  # same centres for every size (seed 0)
    return X


def scaler(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ref, _ = gaussian_mixture(100_000, D, K, seed=0)
    return ref.mean(axis=0), ref.std(axis=0)


def fresh_points(count: int, seed: int, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """New points from the same mixture (same centres, new noise)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 5.0, size=(K, D))  # exactly gaussian_mixture's centres for seed 0
    rng = np.random.default_rng(10_000 + seed)
    X = centres[rng.integers(0, K, size=count)] + rng.normal(size=(count, D))
    return (X - mu) / sd


def sklearn_fit(X: np.ndarray, seed: int) -> float:
    """Seconds of one scikit-learn ``KMeans(n_init=1, init='k-means++', max_iter=100)`` fit."""
    from sklearn.cluster import KMeans as SKMeans

    t = now()
    SKMeans(n_clusters=K, n_init=1, init="k-means++", max_iter=100, random_state=seed).fit(X)
    return now() - t


def sklearn_fit_seconds(X: np.ndarray, repeats: int) -> float:
    return float(np.median([sklearn_fit(X, r) for r in range(repeats)]))


def timed_fit(cls, X: np.ndarray, **params):
    """A model of ``cls`` fitted on X, and the seconds the fit took (insert + flush)."""
    model = cls(k=K, seed=0, **params)
    t = now()
    model.insert(np.arange(len(X)), X)
    model.flush()
    return model, now() - t


#: Seconds between the fits of a pair: OpenBLAS worker threads spin for a while (~0.1 s) after a
#: call before they sleep, and would take the cores from whichever fit came next.
PAUSE = 0.3


def fit_ratio_pairs(X: np.ndarray, pairs: int) -> tuple[float, float, float]:
    """DCKMeans fit / sklearn fit over ``pairs`` back-to-back pairs: (median ratio, median DC s, median sklearn s)."""
    warm_up("dc", K)
    ours, theirs = [], []
    for r in range(pairs):
        time.sleep(PAUSE)
        theirs.append(sklearn_fit(X, r))
        time.sleep(PAUSE)
        ours.append(timed_fit(DCKMeans, X)[1])
    ratios = np.asarray(ours) / np.asarray(theirs)
    return float(np.median(ratios)), float(np.median(ours)), float(np.median(theirs))


def build(cls, X: np.ndarray, repeats: int = 1, **params):
    """A fitted model and its fit time (median of ``repeats`` identical fits, kernels loaded beforehand)."""
    warm_up(cls.algorithm, K)
    times = []
    for _ in range(repeats):
        model, seconds = timed_fit(cls, X, **params)  # the previous model freed: one held at a time
        times.append(seconds)
    return model, float(np.median(times))


def event_latencies(model, X_new: np.ndarray, n: int, repeats: int, rng: np.random.Generator) -> dict:
    """Alternate one insert (fresh id) and one delete (random held id), each flushed."""
    held = list(range(n))
    ins, dels, certified, uncertified = [], [], [], []
    q = isinstance(model, QKMeans)
    next_id = n
    for r in range(repeats):
        t = now()
        model.insert([next_id], X_new[r : r + 1])
        model.flush()
        ins.append(now() - t)
        held.append(next_id)
        next_id += 1
        j = int(rng.integers(len(held)))
        victim = held[j]
        held[j] = held[-1]
        held.pop()
        before = model.certificates_passed_ if q else 0
        t = now()
        model.delete([victim])
        model.flush()
        dt = now() - t
        dels.append(dt)
        if q:
            (certified if model.certificates_passed_ > before else uncertified).append(dt)
    out = {"ins_p50": pct(ins, 50), "ins_p99": pct(ins, 99), "del_p50": pct(dels, 50), "del_p99": pct(dels, 99)}
    if q:
        out.update(cert_p50=pct(certified, 50), cert_p99=pct(certified, 99), cert_n=len(certified),
                   refit_n=len(uncertified), pass_rate=model.certificate_pass_rate_)
    return out


def batch_throughput(model, n: int, X_new: np.ndarray, batches: int, rng: np.random.Generator) -> float:
    """Batches of 1000 events, 10% deletes: apply + flush; returns events per second."""
    held = np.arange(n)
    next_id = n
    times = []
    for b in range(batches):
        victims = rng.choice(len(held), 100, replace=False)
        dead = held[victims]
        held = np.delete(held, victims)
        new_ids = np.arange(next_id, next_id + 900)
        next_id += 900
        t = now()
        model.delete(dead)
        model.insert(new_ids, X_new[b * 900 : (b + 1) * 900])
        model.flush()
        times.append(now() - t)
        held = np.concatenate([held, new_ids])
    return 1000.0 / float(np.median(times))


def traced_bytes(cls, X: np.ndarray, **params) -> tuple[int, int, int]:
    """(bytes traced after build, peak while building, store vector bytes)."""
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    model, _ = build(cls, X, **params)
    gc.collect()
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return cur - base, peak - base, model._store.vector_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma list of n (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=200, help="insert/delete pairs per size (default %(default)s)")
    parser.add_argument("--batches", type=int, default=10, help="1000-event batches (default %(default)s)")
    parser.add_argument("--eps", type=float, default=0.1, help="QKMeans eps, z-score units (default %(default)s)")
    parser.add_argument("--fit-pairs", type=int, default=9,
                        help="back-to-back DC/sklearn fit pairs for the fit target (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 2000,20000, 30 repeats, 3 batches, 3 fit pairs")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.batches, args.fit_pairs = "2000,20000", 30, 3, 3
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    mid = min(sizes, key=lambda s: abs(s - 100_000))
    mu, sd = scaler()
    print(f"# latency: {environment()}", flush=True)
    print(f"# Gaussian mixture d={D} k={K}, z-scored; QKMeans eps={args.eps:g}; DCKMeans defaults "
          f"({DCKMeans(k=K).n_leaves} leaves, fanout {DCKMeans(k=K).fanout}, max_iter 10); {args.repeats} insert+delete pairs per size", flush=True)

    rows, extra = [], {}
    for n in sizes:
        X = (mixture(n, 0) - mu) / sd
        repeats = args.repeats if n < 1_000_000 else max(10, args.repeats // 4)
        X_new = fresh_points(max(repeats, args.batches * 900), n, mu, sd)
        sk = sklearn_fit_seconds(X, 3)
        print(f"n={n}: sklearn fit p50 {sk * 1e3:.1f} ms", flush=True)
        for cls, params in ((DCKMeans, {}), (QKMeans, {"eps": args.eps})):
            model, fit = build(cls, X, repeats=3 if n <= 100_000 else 1, **params)
            lat = event_latencies(model, X_new, n, repeats, np.random.default_rng(n))
            row = {"n": n, "model": cls.__name__, "fit": fit, "sk_fit": sk, "fit_ratio": fit / sk,
                   "ins_p50": lat["ins_p50"] * 1e3, "ins_p99": lat["ins_p99"] * 1e3,
                   "del_p50": lat["del_p50"] * 1e3, "del_p99": lat["del_p99"] * 1e3,
                   "speedup": sk / lat["del_p50"], "repeats": repeats}
            if cls is QKMeans:
                row.update(cert_p50=lat["cert_p50"] * 1e6, cert_n=lat["cert_n"], pass_rate=lat["pass_rate"],
                           refit_n=lat["refit_n"])
            vb = model._store.vector_bytes()
            row["vec_ratio"] = vb / (n * D * 8)
            print(f"  {cls.__name__}: fit {fit:.2f}s, insert p50 {row['ins_p50']:.3f}ms, delete p50 "
                  f"{row['del_p50']:.3f}ms p99 {row['del_p99']:.2f}ms", flush=True)
            del model
            gc.collect()
            if n == mid:
                model, _ = build(cls, X, **params)
                eps_ = batch_throughput(model, n, X_new, args.batches, np.random.default_rng(1))
                row["batch_eps"] = eps_
                print(f"  {cls.__name__}: {eps_:,.0f} events/s in 1000-event batches", flush=True)
                del model
                gc.collect()
                cur, peak, vb = traced_bytes(cls, X, **params)
                extra[cls.__name__] = {"traced": cur, "peak": peak, "vec": vb, "raw": n * D * 8, "n": n}
                if cls is DCKMeans:
                    row["pair_ratio"], row["pair_fit"], row["pair_sk"] = fit_ratio_pairs(X, args.fit_pairs)
                    print(f"  DCKMeans fit / sklearn fit, {args.fit_pairs} back-to-back pairs: median ratio "
                          f"{row['pair_ratio']:.2f}x ({row['pair_fit']:.3f}s vs {row['pair_sk']:.3f}s)", flush=True)
            rows.append(row)
        del X, X_new
        gc.collect()

    print()
    print("Latency (ms; each event followed by flush). 'del speedup' = sklearn fit time / delete p50. "
          "Q cert p50 = p50 over deletes whose certificate passed (microseconds).")
    print(table(rows, [("n", "n"), ("model", "model"), ("fit", "fit s"), ("sk_fit", "sklearn fit s"),
                       ("ins_p50", "insert p50"), ("ins_p99", "insert p99"), ("del_p50", "delete p50"),
                       ("del_p99", "delete p99"), ("speedup", "del speedup"), ("cert_p50", "Q cert p50 us"),
                       ("pass_rate", "Q pass"), ("batch_eps", "batch ev/s"), ("vec_ratio", "vec/raw")]))
    if extra:
        print()
        print(f"Memory at n={mid} (tracemalloc: every byte Python and numpy allocated while building the model "
              "with int ids, i.e. vectors, keys, id strings, the id->slot dict and caches; the input array excluded):")
        mem = [{"model": name, "raw": e["raw"] / 2**20, "vec": e["vec"] / 2**20, "vec_ratio": e["vec"] / e["raw"],
                "traced": e["traced"] / 2**20, "traced_ratio": e["traced"] / e["raw"],
                "per_point": e["traced"] / e["n"], "peak": e["peak"] / 2**20} for name, e in extra.items()]
        print(table(mem, [("model", "model"), ("raw", "raw n*d*8 MiB"), ("vec", "store vectors MiB"),
                          ("vec_ratio", "vec/raw"), ("traced", "traced MiB"), ("traced_ratio", "traced/raw"),
                          ("per_point", "traced B/point"), ("peak", "peak while building MiB")]))

    print()
    print("Targets:")
    by = {(r["n"], r["model"]): r for r in rows}
    for n, goal in ((100_000, 100), (1_000_000, 300)):
        r = by.get((n, "DCKMeans"))
        if r:
            print(f"  DC delete p50 speedup vs sklearn refit >= {goal}x at n={n}: {verdict(r['speedup'] >= goal)} "
                  f"({r['speedup']:.1f}x: {r['del_p50']:.2f} ms vs {r['sk_fit'] * 1e3:.1f} ms)")
    r = by.get((mid, "QKMeans"))
    if r:
        print(f"  Q certified delete p50 <= 100 us at n={mid}: {verdict(r['cert_p50'] <= 100)} ({r['cert_p50']:.0f} us "
              f"over {r['cert_n']} certified deletes; {r['refit_n']} refits; absolute time on a shared 2-core "
              "machine, noisy)")
    for name in ("DCKMeans", "QKMeans"):
        r = by.get((mid, name))
        if r and "batch_eps" in r:
            print(f"  {name} mixed batches >= 50k events/s at n={mid}: {verdict(r['batch_eps'] >= 50_000)} "
                  f"({r['batch_eps']:,.0f}/s)")
    r = by.get((mid, "DCKMeans"))
    if r and "pair_ratio" in r:
        print(f"  DCKMeans fit from scratch <= 1.5x sklearn fit at n={mid}: {verdict(r['pair_ratio'] <= 1.5)} "
              f"({r['pair_ratio']:.2f}x, median of {args.fit_pairs} back-to-back pairs: {r['pair_fit']:.3f}s vs "
              f"{r['pair_sk']:.3f}s)")
    for name, e in extra.items():
        print(f"  {name} store vector bytes <= 1.3x raw at n={e['n']}: {verdict(e['vec'] / e['raw'] <= 1.3)} "
              f"({e['vec'] / e['raw']:.2f}x); all traced bytes {e['traced'] / e['raw']:.2f}x raw "
              f"({e['traced'] / e['n']:.0f} B/point, no target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
