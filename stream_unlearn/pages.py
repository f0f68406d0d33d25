"""Page chains of the point store, compiled (numba).

The store keeps every held vector in one array of fixed-size pages; each
bucket owns a doubly linked chain of pages, filled front to back, and free
pages form one more chain. These loops place new points and list a bucket's
rows: per-point and per-bucket work that would cost microseconds each in
Python (a 100k-point fit touches 4096 buckets).
"""

from __future__ import annotations

from numba import njit

_OPTS = {"cache": True, "boundscheck": False, "nogil": True}


@njit(**_OPTS)
def place(buckets, rows, first, last, size, next_page, prev_page, page_bucket, free_head, slots):
    """Append point i to bucket ``buckets[i]`` (in the order given): its slot goes to ``slots[i]``.

    A bucket whose last page is full takes the head of the free chain; the
    caller makes sure the chain is long enough. Returns the new free head.
    """
    for i in range(len(buckets)):
        b = buckets[i]
        filled = size[b] % rows
        if filled == 0:
            page = free_head
            free_head = next_page[page]
            tail = last[b]
            next_page[page] = -1
            prev_page[page] = tail
            page_bucket[page] = b
            if tail >= 0:
                next_page[tail] = page
            else:
                first[b] = page
            last[b] = page
        slots[i] = last[b] * rows + filled
        size[b] += 1
    return free_head


@njit(**_OPTS)
def bucket_slots(buckets, rows, first, size, next_page, slots):
    """The slots of each given bucket, in row order, back to back in ``slots``."""
    at = 0
    for j in range(len(buckets)):
        b = buckets[j]
        page = first[b]
        left = size[b]
        while left > 0:
            take = min(rows, left)
            base = page * rows
            for r in range(take):
                slots[at] = base + r
                at += 1
            left -= take
            page = next_page[page]


@njit(**_OPTS)
def bucket_in_key_order(b, rows, first, size, next_page, all_keys, keys, slots):
    """One bucket's slots and their keys, sorted by key, into ``slots`` and ``keys`` (its size each).

    Returns True if two keys are equal: the caller then orders by (key, id)
    instead. A single event's flush lists its leaf this way, in one call.
    Quadratic: for buckets of tens of points (the store sends bigger ones elsewhere).
    """
    page = first[b]
    left = size[b]
    n = 0
    while left > 0:
        take = min(rows, left)
        base = page * rows
        for r in range(take):  # insertion by key: a leaf holds tens of points
            slot = base + r
            key = all_keys[slot]
            p = n
            while p > 0 and keys[p - 1] > key:
                keys[p] = keys[p - 1]
                slots[p] = slots[p - 1]
                p -= 1
            keys[p] = key
            slots[p] = slot
            n += 1
        left -= take
        page = next_page[page]
    for i in range(1, n):
        if keys[i - 1] == keys[i]:
            return True
    return False


@njit(**_OPTS)
def pages_needed(counts, size, rows):
    """New pages that adding ``counts[b]`` points to each bucket b takes."""
    total = 0
    for b in range(len(counts)):
        c = counts[b]
        if c > 0:
            s = size[b]
            total += (s + c + rows - 1) // rows - (s + rows - 1) // rows
    return total
