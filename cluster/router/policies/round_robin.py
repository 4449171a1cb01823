"""Each ready replica in turn."""

import itertools

from ..policy import SelectInfo


class RoundRobin:
    name = "round_robin"

    def __init__(self):
        self._next = itertools.count()

    def select(self, replicas: list, info: SelectInfo):
        return replicas[next(self._next) % len(replicas)], "round_robin"
