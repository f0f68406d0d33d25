"""Partition summaries merge into exactly the single-process model."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from stream_unlearn import DCKMeans
from stream_unlearn.hashing import murmur2_partition
from stream_unlearn.summaries import SummaryError, decode_summary, encode_summary, merge, summaries_of


def data(n=3000, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 6, size=(5, d))[rng.integers(0, 5, n)] + rng.normal(size=(n, d))
    return [f"id-{i}" for i in range(n)], X


def test_owners_of_disjoint_partitions_merge_to_the_whole_model():
    ids, X = data()
    P = 3
    parts = np.array([murmur2_partition(i, P) for i in ids])
    whole = DCKMeans(k=5, seed=4, n_partitions=P, n_leaves=32, fanout=8)
    whole.insert(ids, X)
    whole.delete(ids[::7])
    owners = []
    for owned in ([0], [1, 2]):
        m = DCKMeans(k=5, seed=4, n_partitions=P, n_leaves=32, fanout=8)
        mask = np.isin(parts, owned)
        m.insert([i for i, keep in zip(ids, mask) if keep], X[mask])
        m.delete(ids[::7])
        owners.append((m, owned))
    records = [encode_summary(s) for m, owned in owners for s in summaries_of(m, owned, {})]
    latest = {s.partition: s for s in map(decode_summary, records)}
    merged = merge(latest)
    assert merged.complete and merged.n_points == whole.n_points_
    assert np.array_equal(merged.centroids, whole.centroids_)


def test_missing_partition_is_reported_incomplete():
    ids, X = data(600)
    m = DCKMeans(k=3, seed=0, n_partitions=2, n_leaves=8, fanout=4)
    m.insert(ids, X)
    merged = merge({0: summaries_of(m, [0], {0: (10, 2)})[0]})
    assert not merged.complete and merged.partitions == {0: (10, 2)}


def test_incompatible_summaries_are_refused():
    ids, X = data(300)
    a = DCKMeans(k=3, seed=0, n_partitions=2, n_leaves=8, fanout=4)
    b = DCKMeans(k=3, seed=1, n_partitions=2, n_leaves=8, fanout=4)
    a.insert(ids, X)
    b.insert(ids, X)
    with pytest.raises(SummaryError, match="disagree"):
        merge({0: summaries_of(a, [0], {})[0], 1: summaries_of(b, [1], {})[0]})


def test_a_summary_from_before_node_k_merges_with_todays():
    """A worker not yet upgraded writes params without node_k: they mean node_k = k, so its
    summaries still merge with an upgraded worker's."""
    ids, X = data(600)
    m = DCKMeans(k=3, seed=0, n_partitions=2, n_leaves=8, fanout=4)
    m.insert(ids, X)
    old, new = summaries_of(m, [0, 1], {})
    body = msgpack.unpackb(encode_summary(old))
    del body["params"]["node_k"]
    merged = merge({0: decode_summary(msgpack.packb(body)), 1: decode_summary(encode_summary(new))})
    assert merged.complete and np.array_equal(merged.centroids, m.centroids_)
    body["params"]["k"] = 0
    with pytest.raises(SummaryError, match="k must be"):
        decode_summary(msgpack.packb(body))


@pytest.mark.parametrize("blob", [b"", b"\x01\x02", encode_summary.__doc__.encode()])
def test_foreign_records_are_refused(blob):
    with pytest.raises(SummaryError):
        decode_summary(blob)
