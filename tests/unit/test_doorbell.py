"""The leader's doorbell: followers connect with the nonce, wake on a ring, see the leader go."""

import json
import socket
import threading

from cluster.engine.doorbell import FollowerBell, LeaderBell, leader_host


def connected(followers: int = 1, intruder: bool = False) -> tuple[LeaderBell, list[FollowerBell]]:
    leader = LeaderBell("127.0.0.1", followers)
    hello = leader.hello()
    bells: list[FollowerBell] = []

    def join():
        if intruder:  # connects first, without the nonce
            with socket.create_connection(tuple(hello["doorbell"].rsplit(":", 1))) as s:
                s.sendall(b"guess\n")
                s.recv(1)
        bells.extend(FollowerBell(hello) for _ in range(followers))

    t = threading.Thread(target=join)
    t.start()
    leader.accept()
    t.join()
    return leader, bells


def test_a_ring_wakes_each_follower_once_per_ring():
    leader, bells = connected(2)
    assert len(leader.followers) == 2
    leader.ring()
    leader.ring()
    assert [b.wait() for b in bells for _ in range(2)] == [True] * 4


def test_a_connection_without_the_nonce_is_refused():
    leader, bells = connected(1, intruder=True)
    assert len(leader.followers) == 1  # the follower's, not the intruder's
    leader.ring()
    assert bells[0].wait()


def test_a_follower_sees_its_leader_go():
    leader, bells = connected(1)
    for conn in leader.followers:
        conn.close()
    assert bells[0].wait() is False


def test_without_an_address_there_is_no_doorbell_and_waiting_returns_at_once():
    leader = LeaderBell(None, 1)
    assert leader.hello() == {"doorbell": None}
    leader.accept()
    leader.ring()  # nothing to ring
    follower = FollowerBell(leader.hello())
    assert follower.conn is None and follower.wait()


def test_the_leader_address_comes_from_the_mlx_hostfile(tmp_path, monkeypatch):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["10.0.0.7:5000"], ["10.0.0.8:5000"]]))
    monkeypatch.delenv("MLX_JACCL_COORDINATOR", raising=False)
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    assert leader_host() == "10.0.0.7"
    monkeypatch.setenv("MLX_JACCL_COORDINATOR", "10.0.0.9:6000")
    assert leader_host() == "10.0.0.9"
    monkeypatch.setenv("MLX_JACCL_COORDINATOR", "[::1]:6000")
    assert leader_host() == "::1"
    monkeypatch.delenv("MLX_JACCL_COORDINATOR")
    monkeypatch.delenv("MLX_HOSTFILE")
    assert leader_host() is None
