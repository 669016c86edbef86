"""Every Redis key and channel of the Redis broker, each with a hash tag (cluster-safe).

A room key R hashes (CRC-32, the same on every node and every Python) into one of
``partitions`` partitions p; the partition's tag ``{prefix:p<p>}`` starts:

- its pub/sub channel ``{prefix:p<p>}`` (every room of the partition shares it: a node
  subscribes to at most ``partitions`` room channels, however many rooms it has);
- R's history keys ``{prefix:p<p>}:h:R:epoch``, ``...:h:R:seq`` and the stream ``...:h:R``.

So a history script touches one slot, and on Redis Cluster publishes (SPUBLISH) in the slot
it writes.  The others:

- ``{prefix:all}``: broadcasts to every client, or every client of a namespace;
- ``{prefix:node:ID}``: one node's own channel (its probe, control messages to it);
- ``{prefix:nodes}`` (a set of node ids) and ``{prefix:nodes}:ID`` (that node's counts):
  one slot, so the cluster view is one SMEMBERS and one MGET.

Redis uses the first ``{...}`` of a name as its tag; ``channel_prefix`` cannot hold braces
(:mod:`miaws.config`), and ours come first, so a room name cannot change a key's slot.
"""

from __future__ import annotations

from zlib import crc32

__all__ = ["RedisKeys"]


class RedisKeys:
    """The names for one ``channel_prefix`` and number of partitions."""

    def __init__(self, prefix: str = "miaws", partitions: int = 1024) -> None:
        self.prefix = prefix
        self.partitions = partitions
        self.broadcast = f"{{{prefix}:all}}"
        self.nodes = f"{{{prefix}:nodes}}"
        self._channels = [f"{{{prefix}:p{p}}}" for p in range(partitions)]

    def partition(self, room: str) -> int:
        return crc32(room.encode()) % self.partitions

    def room_channel(self, room: str) -> str:
        """The channel of room's partition."""
        return self._channels[crc32(room.encode()) % self.partitions]

    def partition_channel(self, partition: int) -> str:
        return self._channels[partition]

    def history(self, room: str) -> list[str]:
        """room's epoch, seq and stream keys (one slot, with room's channel)."""
        base = f"{self.room_channel(room)}:h:{room}"
        return [base + ":epoch", base + ":seq", base]

    def node_channel(self, node: str) -> str:
        return f"{{{self.prefix}:node:{node}}}"

    def node_counts(self, node: str) -> str:
        return f"{self.nodes}:{node}"
