"""cslide's placement policy: which pages move between the two nodes of each fast/slow pair this round.

Pure numpy over one page set (node, access count, size and memory kind of every page)
and the free memory of each node; no kernel calls, so the flow control can be pinned on
described topologies. docs/cslide.md states the rules; in short, per pair and round,
with `quota` bytes each way:

1. promote hot pages (count >= hot_threshold) from the slow node, hottest first; they may
   use all free fast memory, the reserve included (it is kept *for* hot pages); when they
   need more, the coldest pages of the fast node are demoted to make room, as far as the
   slow node has free memory;
2. when free fast memory is then below `reserve`, demote more of the coldest fast pages;
3. otherwise fill fast memory with warm pages (0 < count < hot_threshold) from the slow
   node, warmest first, while its free memory stays above `reserve`.

Hugetlb pages and other pages (4 KiB and THP) are two kinds with their own free-memory
counters; both draw on the pair's one quota in each direction.
"""
from __future__ import annotations

from typing import Mapping

import attrs
import numpy as np

NORMAL, HUGETLB = 0, 1
KIND_NAMES = {NORMAL: "normal", HUGETLB: "hugetlb"}

# why a page moves
PROMOTE_HOT, PREFETCH_WARM, DEMOTE_FOR_HOT, DEMOTE_FOR_RESERVE = 1, 2, 3, 4   # 0: the page stays
REASONS = {PROMOTE_HOT: "promote_hot", PREFETCH_WARM: "prefetch_warm",
           DEMOTE_FOR_HOT: "demote_for_hot", DEMOTE_FOR_RESERVE: "demote_for_reserve"}


@attrs.frozen
class NodeMemory:
    """Total and free bytes of one node, for one kind of page."""

    total: int
    free: int


@attrs.define
class PairPlan:
    """What the plan does on one fast/slow pair (bytes)."""

    fast: int
    slow: int
    quota: int
    promoted: int = 0            # hot pages slow -> fast
    prefetched: int = 0          # warm pages slow -> fast
    demoted_for_hot: int = 0     # cold pages fast -> slow, to make room for hot ones
    demoted_for_reserve: int = 0 # cold pages fast -> slow, to bring free fast memory back to the reserve
    notes: list = attrs.field(factory=list)

    @property
    def promote_used(self) -> int:
        return self.promoted + self.prefetched

    @property
    def demote_used(self) -> int:
        return self.demoted_for_hot + self.demoted_for_reserve

    def as_dict(self) -> dict:
        d = attrs.asdict(self)
        d.update(promote_used=self.promote_used, demote_used=self.demote_used)
        return d


@attrs.define
class Plan:
    """`target[i]`: the node page i moves to (-1: it stays); `reason[i]`: why (REASONS)."""

    target: np.ndarray
    reason: np.ndarray
    pairs: list

    def moves(self) -> np.ndarray:
        return np.flatnonzero(self.target >= 0)


def _prefix_upto(order: np.ndarray, size: np.ndarray, limit: int) -> np.ndarray:
    """The longest prefix of `order` whose sizes add up to at most `limit` bytes."""
    if limit <= 0 or not len(order):
        return order[:0]
    cum = np.cumsum(size[order])
    return order[:int(np.searchsorted(cum, limit, side="right"))]


def _prefix_atleast(order: np.ndarray, size: np.ndarray, need: int, limit: int) -> np.ndarray:
    """The shortest prefix of `order` adding up to `need` bytes, never beyond `limit` bytes."""
    if need <= 0 or limit <= 0 or not len(order):
        return order[:0]
    cum = np.cumsum(size[order])
    enough = int(np.searchsorted(cum, need, side="left")) + 1
    allowed = int(np.searchsorted(cum, limit, side="right"))
    return order[:min(enough, allowed, len(order))]


def plan_moves(node: np.ndarray, count: np.ndarray, size: np.ndarray, kind: np.ndarray,
               pairs, hot_threshold: int, quota: int, reserve: int,
               memory: Mapping[tuple[int, int], NodeMemory]) -> Plan:
    """Decide this round's moves.

    node, count, size, kind: one entry per page (node it is on now, access count over the
    round, bytes, NORMAL or HUGETLB). pairs: ((fast, slow), ...). quota and reserve in
    bytes. memory[(node, kind)]: that node's memory for that kind of page (missing: none).
    """
    node = np.asarray(node, dtype=np.int32)
    count = np.asarray(count, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    kind = np.asarray(kind, dtype=np.uint8)
    target = np.full(len(node), -1, dtype=np.int32)
    reason = np.zeros(len(node), dtype=np.uint8)
    hot = count >= hot_threshold
    # Orders are stable sorts of address-ordered input: ties keep address order.
    hottest_first = np.argsort(-count, kind="stable")
    coldest_first = np.argsort(count, kind="stable")
    plans = []
    for fast, slow in pairs:
        p = PairPlan(int(fast), int(slow), int(quota))
        promote_left, demote_left = int(quota), int(quota)
        for k in (HUGETLB, NORMAL):
            mine = kind == k
            on_fast, on_slow = mine & (node == fast), mine & (node == slow)
            if not (on_fast.any() or on_slow.any()):
                continue
            fast_mem = memory.get((int(fast), k), NodeMemory(0, 0))
            slow_mem = memory.get((int(slow), k), NodeMemory(0, 0))
            free_fast, free_slow = int(fast_mem.free), int(slow_mem.free)
            name = KIND_NAMES[k]

            # 1. hot pages up, hottest first; cold ones down to make room when needed
            hot_slow = hottest_first[(on_slow & hot)[hottest_first]]
            cold_fast = coldest_first[(on_fast & ~hot)[coldest_first]]
            wanted = _prefix_upto(hot_slow, size, promote_left)
            want_bytes = int(size[wanted].sum())
            if want_bytes < int(size[hot_slow].sum()):
                p.notes.append(f"{name}: promotion of hot pages capped by node_mig_quota")
            down = cold_fast[:0]
            if want_bytes > free_fast:
                room_below = min(demote_left, free_slow)
                down = _prefix_atleast(cold_fast, size, want_bytes - free_fast, room_below)
                if free_slow < min(demote_left, want_bytes - free_fast):
                    p.notes.append(f"{name}: slow node {slow} is full: fewer cold pages demoted")
            demoted = int(size[down].sum())
            up = _prefix_upto(wanted, size, free_fast + demoted)
            if len(up) < len(wanted):
                p.notes.append(f"{name}: fast node {fast} has no room for every hot page")
            promoted = int(size[up].sum())
            target[down], reason[down] = slow, DEMOTE_FOR_HOT
            target[up], reason[up] = fast, PROMOTE_HOT
            promote_left -= promoted
            demote_left -= demoted
            p.promoted += promoted
            p.demoted_for_hot += demoted
            free_fast += demoted - promoted
            free_slow += promoted - demoted

            # 2. below the reserve: demote the coldest pages still on the fast node
            if free_fast < reserve:
                rest = cold_fast[len(down):]
                more = _prefix_atleast(rest, size, reserve - free_fast, min(demote_left, free_slow))
                n = int(size[more].sum())
                target[more], reason[more] = slow, DEMOTE_FOR_RESERVE
                demote_left -= n
                p.demoted_for_reserve += n
                free_fast += n
                free_slow -= n
                if free_fast < reserve:
                    p.notes.append(f"{name}: free memory of fast node {fast} stays below node_hot_reserve")
            # 3. above it: fill fast memory with warm pages while it stays above the reserve
            elif free_fast > reserve:
                warm = hottest_first[(on_slow & ~hot & (count > 0))[hottest_first]]
                fill = _prefix_upto(warm, size, min(promote_left, free_fast - reserve))
                n = int(size[fill].sum())
                target[fill], reason[fill] = fast, PREFETCH_WARM
                promote_left -= n
                p.prefetched += n
        plans.append(p)
    return Plan(target, reason, plans)
