"""Requests with the same session key go where the session went first, while it is ready
and not overloaded (one `prompt_cache_key` for a whole application once pinned every request
to one replica)."""

from collections import OrderedDict

from ..policy import SelectInfo, overloaded

MAX_SESSIONS = 100_000


class SessionAffinity:
    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.sessions: OrderedDict[str, str] = OrderedDict()

    def select(self, replicas: list, info: SelectInfo):
        if info.session_id:
            name = self.sessions.get(info.session_id)
            floor = min(r.in_flight for r in replicas)
            for r in replicas:
                if r.name == name and not overloaded(r.in_flight, floor):
                    self.sessions.move_to_end(info.session_id)
                    return r, "session"
        replica, reason = self.inner.select(replicas, info)
        if info.session_id:
            self.sessions[info.session_id] = replica.name
            if len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        return replica, reason
