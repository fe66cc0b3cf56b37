"""The local cluster launcher: the cluster suites will stand on it, so it is checked
against the servers' own answers (CLUSTER INFO/SLOTS/KEYSLOT, INFO replication), not
against its own view of the cluster."""

from __future__ import annotations

import itertools
import os
import re
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from redisca.embedded import EmbeddedCluster, EmbeddedServer, ServerStartError

SLOTS = 16384


def _gone(pid: int | None) -> bool:
    """The process no longer exists (EmbeddedServer reaps its children, so a dead
    server leaves no zombie behind)."""
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _plain(node: EmbeddedServer) -> redis.Redis:
    return node.client(decode_responses=True, protocol=2, retry=Retry(NoBackoff(), 0))


def _slots_as_served(node: EmbeddedServer) -> dict[int, int]:
    """Slot -> port of its master, from the node's own ``CLUSTER SLOTS`` reply."""
    with _plain(node) as client:
        reply = client.execute_command("CLUSTER", "SLOTS")
    owner: dict[int, int] = {}
    for first, last, master, *_replicas in reply:
        for slot in range(int(first), int(last) + 1):
            assert slot not in owner, f"slot {slot} served twice"
            owner[slot] = int(master[1])
    return owner


def _keys_per_master(cluster: EmbeddedCluster) -> dict[int, str]:
    """One key for each master (port -> key), found by the servers' CLUSTER KEYSLOT."""
    owner = _slots_as_served(cluster.masters[0])
    found: dict[int, str] = {}
    with _plain(cluster.masters[0]) as client:
        for i in itertools.count():
            key = f"user:{i}"
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            assert slot == key_slot(key.encode())
            found.setdefault(owner[slot], key)
            if len(found) == len(cluster.masters):
                return found
    raise AssertionError("unreachable")


def test_every_node_is_ok_and_every_slot_is_served_once(cluster: EmbeddedCluster) -> None:
    ports = {node.port for node in cluster.masters}
    assert len(cluster.nodes) == len(cluster.masters) == 3 and not cluster.replicas
    views = []
    for node in cluster.nodes:
        with _plain(node) as client:
            info = client.execute_command("CLUSTER", "INFO")
            assert client.config_get("cluster-enabled")["cluster-enabled"] == "yes"
            timeout = client.config_get("cluster-node-timeout")["cluster-node-timeout"]
            assert timeout == str(cluster.node_timeout)
        assert "cluster_state:ok" in info
        assert "cluster_slots_ok:16384" in info and "cluster_known_nodes:3" in info
        view = _slots_as_served(node)
        assert sorted(view) == list(range(SLOTS))  # each slot once (checked while parsing)
        assert set(view.values()) == ports  # spread over every master
        views.append(view)
    assert all(view == views[0] for view in views)  # the nodes agree
    assert {cluster.node_for_slot(slot).port for slot in (0, SLOTS // 2, SLOTS - 1)} == ports


def test_client_routes_keys_to_every_master(cluster: EmbeddedCluster) -> None:
    keys = _keys_per_master(cluster)
    with cluster.client(decode_responses=True) as client:
        assert isinstance(client, RedisCluster)
        for port, key in keys.items():
            client.set(key, f"on {port}")
        for port, key in keys.items():
            assert client.get(key) == f"on {port}"
    for node in cluster.masters:
        assert cluster.node_for_key(keys[node.port]) is node
        assert cluster.node_for_key(keys[node.port].encode()) is node
        with _plain(node) as plain:  # each value is on its own master, alone there
            assert plain.get(keys[node.port]) == f"on {node.port}"
            assert plain.dbsize() == 1


def test_a_plain_client_on_one_node_is_moved(cluster: EmbeddedCluster) -> None:
    keys = _keys_per_master(cluster)
    here, there = cluster.masters[0], cluster.masters[1]
    key = keys[there.port]
    with _plain(here) as client, pytest.raises(redis.ResponseError) as info:
        client.get(key)
    # redis-py 5 raises ResponseError("MOVED <slot> <addr>"), 8 a MovedError("<slot> <addr>").
    moved = rf"(MOVED )?{key_slot(key.encode())} 127\.0\.0\.1:{there.port}"
    assert re.fullmatch(moved, str(info.value)), str(info.value)


def test_url_startup_nodes_and_repr(cluster: EmbeddedCluster) -> None:
    assert cluster.url == cluster.masters[0].url
    assert {node.port for node in cluster.startup_nodes} == {n.port for n in cluster.nodes}
    with RedisCluster.from_url(cluster.url) as client:
        assert len(client.get_primaries()) == 3
    ports = ",".join(str(node.port) for node in cluster.masters)
    assert repr(cluster) == (
        f"<EmbeddedCluster 3 masters x 0 replicas, ports {ports}, 3/3 nodes running>"
    )
    assert cluster.start() is cluster  # already started: nothing happens
    assert cluster.node_id(cluster.masters[0]) != cluster.node_id(cluster.masters[1])
    with pytest.raises(ValueError, match="slot"):
        cluster.node_for_slot(SLOTS)


def test_options_the_cluster_sets_itself_are_refused() -> None:
    for option in ("cluster-enabled", "cluster-config-file", "--cluster-node-timeout"):
        with pytest.raises(ValueError, match="manages"):
            EmbeddedCluster(config={option: "x"})
    with pytest.raises(ValueError, match="port"):
        EmbeddedCluster(config={"port": "1234"})
    with pytest.raises(ValueError, match="master"):
        EmbeddedCluster(masters=0)


def test_a_cluster_not_ok_in_time_reports_and_leaves_nothing_running() -> None:
    # A master waits about 2 s after its start before it reports cluster_state:ok.
    cluster = EmbeddedCluster(masters=1, start_timeout=0.3)
    with pytest.raises(ServerStartError, match=r"did not become ok within 0\.3 s") as info:
        cluster.start()
    assert "cluster_state:fail" in str(info.value)
    assert f"node 127.0.0.1:{cluster.masters[0].port}" in str(info.value)
    assert "log tail" in str(info.value)
    assert not cluster.masters[0].running


def test_a_replica_links_up_and_stop_ends_every_process() -> None:
    cluster = EmbeddedCluster(masters=1, replicas=1).start()
    master, replica = cluster.masters[0], cluster.replicas[0]
    pids = [node.pid for node in cluster.nodes]
    dirs = [node.dir for node in cluster.nodes]
    try:
        with _plain(replica) as client:
            info = client.info("replication")
            timeout = client.config_get("cluster-node-timeout")["cluster-node-timeout"]
        assert timeout == "2000"  # the launcher's default, small for quick failovers
        assert info["role"] == "slave" and info["master_link_status"] == "up"
        assert int(info["master_port"]) == master.port
        with _plain(master) as client:
            client.set("k", "v")
            assert client.execute_command("WAIT", 1, 5000) == 1  # the replica has it
    finally:
        cluster.stop()
    assert all(_gone(pid) for pid in pids)
    assert not any(os.path.exists(d) for d in dirs)
    assert not any(node.running for node in cluster.nodes)
    assert repr(cluster).endswith("0/2 nodes running>")


@pytest.mark.slow
def test_kill_9_of_a_master_promotes_its_replica_and_the_master_rejoins() -> None:
    with EmbeddedCluster(masters=3, replicas=1, node_timeout=1000) as cluster:
        master, replica = cluster.masters[0], cluster.replicas[0]
        key = _keys_per_master(cluster)[master.port]
        assert cluster.node_for_key(key) is master
        with _plain(master) as client:
            client.set(key, "kept")
            assert client.execute_command("WAIT", 1, 5000) == 1
        pid = master.pid
        killed = time.monotonic()
        master.kill()
        assert _gone(pid)
        role = None
        while role != "master":
            assert time.monotonic() - killed < 15, "the replica was not promoted in 15 s"
            time.sleep(0.05)
            with _plain(replica) as client:
                role = client.info("replication")["role"]
        # Detection takes node_timeout, then the replica waits 0.5-1 s and is voted in.
        assert time.monotonic() - killed > 1.0
        cluster.wait_ok(timeout=15)
        assert cluster.node_for_key(key) is replica
        with cluster.client(decode_responses=True) as client:
            assert client.get(key) == "kept"
        master.restart()  # same port and nodes.conf: it comes back as the new replica
        cluster.wait_ok(timeout=15)
        with _plain(master) as client:
            info = client.info("replication")
            assert cluster.node_id(master) == client.execute_command("CLUSTER", "MYID")
        assert info["role"] == "slave" and int(info["master_port"]) == replica.port
