"""The SecAgg+ neighbour graph: a Harary graph H(k, n) on a random permutation of the ids.

Bell et al. only need each client's neighbourhood to be a random set of size ``k = O(log n)``
unknown to the clients in advance; a ring lattice (each node linked to the ``k/2`` nearest on
each side) over a uniformly random ordering is k-regular, connected, and drawn with the
server's cryptographic randomness (Fisher-Yates over ``randbelow``). ``k >= n-1`` gives the
complete graph, i.e. classic SecAgg.
"""

from __future__ import annotations

from collections.abc import Sequence

from privacy.rand import DEFAULT_RANDOMNESS, Randomness


def shuffled(ids: Sequence[int], rng: Randomness) -> list[int]:
    out = list(ids)
    for i in range(len(out) - 1, 0, -1):
        j = rng.randbelow(i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def neighbour_ring(ids: Sequence[int], k: int, rng: Randomness = DEFAULT_RANDOMNESS) -> list[int]:
    """The ids in the order :func:`ring_graph` links them: a random permutation (the sorted
    ids for the complete graph, which draws nothing)."""
    ids = sorted(set(ids))
    if k >= len(ids) - 1:
        return ids
    if k % 2:
        raise ValueError("k must be even for a Harary graph below the complete graph")
    return shuffled(ids, rng)


def ring_graph(ring: Sequence[int], k: int) -> dict[int, frozenset[int]]:
    """Each id linked to the ``k/2`` nearest on each side of it in ``ring`` (complete if
    ``k >= len(ring) - 1``)."""
    n = len(ring)
    if k >= n - 1:
        return {i: frozenset(j for j in ring if j != i) for i in ring}
    half = k // 2
    return {
        ring[p]: frozenset(ring[(p + d) % n] for d in range(-half, half + 1) if d != 0)
        for p in range(n)
    }


def neighbour_graph(
    ids: Sequence[int], k: int, rng: Randomness = DEFAULT_RANDOMNESS
) -> dict[int, frozenset[int]]:
    """A random k-regular graph on ``ids`` (complete if ``k >= len(ids) - 1``)."""
    return ring_graph(neighbour_ring(ids, k, rng), k)
