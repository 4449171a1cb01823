"""The ready replica with the fewest requests in flight."""

import itertools

from ..policy import SelectInfo, least_loaded


class LeastLoaded:
    name = "least_loaded"

    def __init__(self):
        self._next = itertools.count()

    def select(self, replicas: list, info: SelectInfo):
        return least_loaded(replicas, next(self._next)), "least_loaded"
