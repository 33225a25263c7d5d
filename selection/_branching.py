"""Ryan-Foster branching decisions on which tasks share a served set.

Served sets are bit masks over task indices (bit t = task t).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Branching:
    """Pairs of tasks that must be served by the same set, or by different sets."""

    together: tuple = ()
    apart: tuple = ()

    def with_pair(self, a, b, same):
        """A copy with the pair (a, b) added to ``together`` (same) or ``apart``."""
        if same:
            return Branching(self.together + ((a, b),), self.apart)
        return Branching(self.together, self.apart + ((a, b),))

    def allows(self, served):
        """Whether the served set (a bit mask) respects every decision."""
        together = all((served >> a & 1) == (served >> b & 1) for a, b in self.together)
        return together and not any(served >> a & served >> b & 1 for a, b in self.apart)

    def classes(self, n):
        """Tasks glued by ``together``, as a list of bit masks covering range(n)."""
        label = list(range(n))

        def root(t):
            while label[t] != t:
                t = label[t]
            return t

        for a, b in self.together:
            label[root(a)] = root(b)
        masks = {}
        for t in range(n):
            masks[root(t)] = masks.get(root(t), 0) | 1 << t
        return list(masks.values())

    def conflicts(self, classes):
        """For each class, the bit mask of the classes it may not share a set with."""
        index = {t: i for i, mask in enumerate(classes) for t in _bits(mask)}
        result = [0] * len(classes)
        for a, b in self.apart:
            result[index[a]] |= 1 << index[b]
            result[index[b]] |= 1 << index[a]
        return result


def _bits(mask):
    """The task indices set in a bit mask, increasing."""
    return [t for t in range(mask.bit_length()) if mask >> t & 1]


def feasible_partition(n, branching, max_sets):
    """A partition of range(n) into at most ``max_sets`` served sets that
    respects ``branching`` (as bit masks), or None when none exists.

    Exhaustive backtracking colouring of the conflict graph between classes,
    a new set only ever opened as the next unused one (symmetry breaking).
    """
    classes = branching.classes(n)
    conflicts = branching.conflicts(classes)
    order = sorted(range(len(classes)), key=lambda i: -bin(conflicts[i]).count("1"))
    colour = [None] * len(classes)

    def place(position, used):
        if position == len(order):
            return True
        i = order[position]
        for c in range(min(used + 1, max_sets)):
            if all(colour[j] != c for j in _bits(conflicts[i])):
                colour[i] = c
                if place(position + 1, max(used, c + 1)):
                    return True
        colour[i] = None
        return False

    if not place(0, 0):
        return None
    sets = {}
    for i, c in enumerate(colour):
        sets[c] = sets.get(c, 0) | classes[i]
    return list(sets.values())
