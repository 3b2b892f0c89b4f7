"""The page-set arithmetic shared by the scanner and the actions."""
import numpy as np
from hypothesis import given, strategies as st

from etmem.pages import PAGE, page_addresses, union

U = np.uint64


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=30))
def test_union_covers_exactly_the_pages_of_its_input_with_disjoint_non_touching_runs(spans):
    spans = sorted(spans)
    starts = np.array([s * PAGE for s, _ in spans], dtype=U)
    ends = np.array([(s + n) * PAGE for s, n in spans], dtype=U)
    ms, me = union(starts, ends)
    want = sorted({s + i for s, n in spans for i in range(n)})
    got = (page_addresses(ms, me) // U(PAGE)).tolist()
    assert got == want
    assert (ms[1:] > me[:-1]).all(), "runs that touch or overlap must have been merged"


def test_page_addresses_lists_every_page_of_each_range_in_order():
    got = page_addresses(np.array([0x10000, 0x3000], dtype=U), np.array([0x12000, 0x4000], dtype=U))
    assert got.tolist() == [0x10000, 0x10000 + PAGE, 0x3000]
    assert page_addresses(np.empty(0, U), np.empty(0, U)).size == 0
