"""Keyed 64-bit hashing of point ids and counter-based uniforms.

Everything random in the models is a pure function of ``(seed, id, step)``,
never of a global RNG, so that a model is a function of the SET of points it
holds (DESIGN section 1). The hash is vectorised over ids: one numpy pass per
8 bytes of id length instead of one Python call per id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_TWO_POW_MINUS_53 = 2.0**-53


def mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective avalanche of uint64 values."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> _S30)) * _M1  # uint64 arrays wrap silently, as intended
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def seed_key(seed: int, domain: int = 0) -> np.uint64:
    """A 64-bit key for ``seed`` in a named domain (leaves, races, phases...)."""
    raw = np.array([(seed * 0x2545F4914F6CDD1D + domain) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    return mix64(mix64(raw) ^ _GOLDEN)[0]


def combine(key: np.ndarray | np.uint64, value: np.ndarray | int) -> np.ndarray:
    """Hash of the pair ``(key, value)``; both may be arrays that broadcast."""
    v = np.atleast_1d(np.asarray(value).astype(np.uint64))
    return mix64(np.asarray(key, dtype=np.uint64) ^ mix64(v + _GOLDEN))


def id_keys(ids: Sequence[str], seed: int) -> np.ndarray:
    """``h(seed, id)`` for every id: uint64, fixed by the id's own bytes alone.

    Ids are packed into zero-padded 8-byte words; each id mixes in only the
    words that overlap its own bytes (and its length), so the key never
    depends on which other ids share the call.
    """
    n = len(ids)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    return _keys_of_words(*_id_words(ids), seed)


def int_id_keys(values: np.ndarray, seed: int) -> np.ndarray:
    """:func:`id_keys` of integer ids given as an integer array (their decimal strings, as the wire
    means them), without making the strings: 100k int ids, 11 -> 6 ms."""
    values = np.asarray(values)
    if len(values) == 0:
        return np.empty(0, dtype=np.uint64)
    magnitude, negative, digits = _decimal_parts(values)
    lengths = digits + negative
    width = max(8, -(-int(lengths.max()) // 8) * 8)
    raw = np.zeros((len(values), width), dtype=np.uint8)
    _decimal_bytes(magnitude, negative, digits, raw)
    return _keys_of_words(raw.view("<u8"), lengths.astype(np.uint64), seed)


def decimal_strings(values: np.ndarray) -> list[str]:
    """``[str(v) for v in values]`` for an integer array, written by compiled code into one ASCII
    buffer that Python splits: 100k ids, ~1.7x faster than ``map(str, values.tolist())``."""
    values = np.asarray(values)
    if len(values) == 0:
        return []
    magnitude, negative, digits = _decimal_parts(values)
    lines = np.empty(int(digits.sum()) + int(negative.sum()) + len(values) - 1, dtype=np.uint8)
    _decimal_lines(magnitude, negative, digits, lines)
    return lines.tobytes().decode("ascii").split("\n")


def decimal_lengths(values: np.ndarray) -> np.ndarray:
    """Characters of each integer's decimal form."""
    _, negative, digits = _decimal_parts(np.asarray(values))
    return digits + negative


def _decimal_parts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitudes (uint64), signs and digit counts of an integer array."""
    negative = values < 0 if values.dtype.kind == "i" else np.zeros(len(values), dtype=np.bool_)
    magnitude = values.astype(np.uint64)
    magnitude[negative] = np.uint64(0) - magnitude[negative]  # two's complement: |v|, also for the minimum
    digits = np.empty(len(values), dtype=np.int64)
    _decimal_digits(magnitude, _POWERS_OF_TEN, digits)
    return magnitude, negative, digits


_POWERS_OF_TEN = np.array([10**p for p in range(1, 20)], dtype=np.uint64)


@njit(cache=True, nogil=True)
def _decimal_digits(magnitude, powers, out):
    """``out[i]``: how many decimal digits ``magnitude[i]`` has (1 for 0); ``powers``: 10 ** (1..19)."""
    for i in range(len(magnitude)):
        n = 1
        while n <= len(powers) and magnitude[i] >= powers[n - 1]:
            n += 1
        out[i] = n


@njit(inline="always", cache=True, nogil=True)
def _write_decimal(out, p, m, negative, digits):
    """The ASCII decimal form of ``-m if negative else m`` (``digits`` digits) into ``out[p:]``; returns
    where it ends."""
    if negative:
        out[p] = 45  # '-'
        p += 1
    ten = np.uint64(10)
    for position in range(p + digits - 1, p - 1, -1):
        rest = m // ten  # uint64 throughout: no float on the way
        out[position] = np.uint8(np.uint64(48) + (m - rest * ten))
        m = rest
    return p + digits


@njit(cache=True, nogil=True)
def _decimal_bytes(magnitude, negative, digits, out):
    """``out[i]``: the ASCII decimal form of ``(-1 if negative[i] else 1) * magnitude[i]``, zero-padded."""
    for i in range(len(magnitude)):
        _write_decimal(out[i], 0, magnitude[i], negative[i], digits[i])


@njit(cache=True, nogil=True)
def _decimal_lines(magnitude, negative, digits, out):
    """``out``: the ASCII decimal forms of :func:`_decimal_bytes`, one after another, each but the last
    followed by a newline."""
    p = 0
    for i in range(len(magnitude)):
        p = _write_decimal(out, p, magnitude[i], negative[i], digits[i])
        if p < len(out):
            out[p] = 10  # '\n'
            p += 1


def _keys_of_words(words: np.ndarray, lengths: np.ndarray, seed: int) -> np.ndarray:
    """Mix each id's length, then each 8-byte word its bytes overlap, into its key.

    That is ``h = combine(seed_key(seed, 1), length)``, then for each word
    ``col`` the id's bytes reach, ``h = mix64(h ^ word ^ mix64(col + 1))``:
    one compiled pass (numpy's took ~4 ms per 100k ids in ten passes per word).
    """
    words = np.ascontiguousarray(words, dtype=np.uint64)
    word_salts = mix64(np.arange(1, words.shape[1] + 1, dtype=np.uint64))
    out = np.empty(len(lengths), dtype=np.uint64)
    _mix_words(seed_key(seed, 1), np.ascontiguousarray(lengths, dtype=np.uint64), words, word_salts, out)
    return out


@njit(inline="always", cache=True, nogil=True)
def _mix64_one(z):
    """:func:`mix64` of one uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _mix_words(key, lengths, words, word_salts, out):
    """``out[i]``: the key of id i from its byte length and words (see :func:`_keys_of_words`)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    eight = np.uint64(8)
    for i in range(len(lengths)):
        n = lengths[i]
        h = _mix64_one(key ^ _mix64_one(n + golden))
        for col in range(words.shape[1]):
            if n > np.uint64(col) * eight:
                h = _mix64_one(h ^ words[i, col] ^ word_salts[col])
        out[i] = h


def _id_words(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of each id, zero-padded to a common multiple of 8, as little-endian words; byte lengths."""
    ascii_only = all(map(str.isascii, ids))  # then code points are the bytes: numpy packs them in C
    encoded: Sequence[str | bytes] = ids if ascii_only else [s.encode("utf-8") for s in ids]
    lengths = np.fromiter(map(len, encoded), dtype=np.uint64, count=len(ids))
    width = max(8, -(-int(lengths.max()) // 8) * 8)
    if ascii_only:
        raw = np.array(ids, dtype=f"U{width}").view(np.uint32).astype(np.uint8)
    else:
        raw = np.array(encoded, dtype=f"S{width}").view(np.uint8)
    return raw.reshape(len(ids), width).view("<u8"), lengths


def uniforms(keys: np.ndarray, salt: np.uint64 | np.ndarray) -> np.ndarray:
    """A float in (0, 1] per key, for the given salt.

    1.0 only when the hash's top 53 bits are all ones (odds 2^-53): ``+ 0.5``
    then rounds up. Its race key log(1) = 0 wins whatever the weight; rare,
    and as deterministic as any other draw, so the contract holds. Making it
    open would change every model's bits.
    """
    bits = combine(np.asarray(keys, dtype=np.uint64), salt) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * _TWO_POW_MINUS_53


def uniforms_per_salt(keys: np.ndarray, salts: np.ndarray) -> np.ndarray:
    """``uniforms(keys, s)`` for each salt s: (len(salts), len(keys)), the same bits in one compiled pass.

    numpy's version runs each of mix64's ten operations as a pass over a
    temporary array: ~10 ms per 100k keys and five salts, a tenth of a DC fit.
    """
    return uniforms_per_mixed_salt(keys, mixed_salts(salts))


def mixed_salts(salts: np.ndarray) -> np.ndarray:
    """What :func:`uniforms_per_mixed_salt` takes for ``salts``: a caller with fixed salts mixes them once
    (ten numpy calls: mixing at every call made a DC event's race uniforms 22 us instead of 10)."""
    return mix64(np.ascontiguousarray(salts, dtype=np.uint64) + _GOLDEN)


def uniforms_per_mixed_salt(keys: np.ndarray, mixed: np.ndarray) -> np.ndarray:
    """:func:`uniforms_per_salt` for salts already passed through :func:`mixed_salts`."""
    out = np.empty((len(mixed), len(keys)))
    _uniforms_per_salt(np.ascontiguousarray(keys, dtype=np.uint64), mixed, out)
    return out


@njit(cache=True, nogil=True)
def _uniforms_per_salt(keys, mixed_salts, out):
    s11 = np.uint64(11)
    for j in range(len(mixed_salts)):
        salt = mixed_salts[j]
        for i in range(len(keys)):
            out[j, i] = (np.float64(_mix64_one(keys[i] ^ salt) >> s11) + 0.5) * 2.0**-53


def canonical_order(keys: np.ndarray, ids_of: Callable[[], Sequence[str]]) -> np.ndarray:
    """Indices sorting points by ``(key, id)``: an order fixed by the points alone.

    Distinct keys have one sorted order whatever the algorithm, so the
    unstable default sort is used (5x faster than a stable one on 100k random
    keys: a Q-k-means refit at 100k saves ~8 ms); equal keys re-sort by id.
    ``ids_of()`` gives the ids in the order of ``keys``; it is called only on
    a collision, so a caller need not gather 100k ids for nothing.
    """
    order = np.argsort(keys)
    sorted_keys = keys[order]
    if len(sorted_keys) > 1 and np.any(sorted_keys[1:] == sorted_keys[:-1]):
        # A 64-bit collision: break ties by the id itself (rare, so Python is fine).
        ids = ids_of()
        order = np.array(sorted(range(len(ids)), key=lambda i: (int(keys[i]), ids[i])), dtype=np.intp)
    return order


def murmur2_partitions(ids: Sequence[str], n_partitions: int) -> np.ndarray:
    """:func:`murmur2_partition` of many ids in one compiled pass (int64 array)."""
    return murmur2_key_partitions([i.encode("utf-8") for i in ids], n_partitions)


def murmur2_key_partitions(data: Sequence[bytes], n_partitions: int) -> np.ndarray:
    """Kafka's default partition of each key (positive murmur2 mod n), in one compiled pass (int64 array)."""
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    out = np.empty(len(data), dtype=np.int64)
    _murmur2_partitions(np.frombuffer(b"".join(data), dtype=np.uint8), offsets, n_partitions, out)
    return out


@njit(cache=True, nogil=True)
def _murmur2_partitions(data, offsets, n_partitions, out):
    """Kafka's murmur2 (32-bit, in uint64 with masks) of each ``data[offsets[i]:offsets[i+1]]``."""
    m = np.uint64(0x5BD1E995)
    mask = np.uint64(0xFFFFFFFF)
    for j in range(len(out)):
        lo, length = offsets[j], offsets[j + 1] - offsets[j]
        h = (np.uint64(0x9747B28C) ^ np.uint64(length)) & mask
        tail = length & ~3
        for i in range(lo, lo + tail, 4):
            k = (np.uint64(data[i]) | (np.uint64(data[i + 1]) << np.uint64(8))
                 | (np.uint64(data[i + 2]) << np.uint64(16)) | (np.uint64(data[i + 3]) << np.uint64(24)))
            k = (k * m) & mask
            k ^= k >> np.uint64(24)
            k = (k * m) & mask
            h = ((h * m) & mask) ^ k
        rest = length & 3
        end = lo + tail
        if rest == 3:
            h ^= np.uint64(data[end + 2]) << np.uint64(16)
        if rest >= 2:
            h ^= np.uint64(data[end + 1]) << np.uint64(8)
        if rest >= 1:
            h ^= np.uint64(data[end])
            h = (h * m) & mask
        h ^= h >> np.uint64(13)
        h = (h * m) & mask
        h ^= h >> np.uint64(15)
        out[j] = np.int64(h & np.uint64(0x7FFFFFFF)) % n_partitions


def murmur2_partition(point_id: str, n_partitions: int) -> int:
    """Kafka's default partitioner for the key ``point_id`` (UTF-8 bytes).

    Matches the Java client and kafka-python, so that without explicit
    partitions a model buckets a point exactly where Kafka routes its events.
    """
    return int(murmur2_partitions([point_id], n_partitions)[0])