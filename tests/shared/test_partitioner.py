"""Every producer's cached partitioner picks the partition aiokafka's (and Kafka's) default one does."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from shared.kafka import partition_by_key


def test_cached_partitioner_matches_default() -> None:
    """Every key, asked twice (cached), maps to the default partitioner's partition."""
    rng = random.Random(7)
    default = DefaultPartitioner()
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(64))) for _ in range(2000)]
    keys += ["安亭镇-subject".encode(), b"world-metaverse-conference-2023"]
    for partitions in ([0], [0, 1, 2], list(range(7)), list(range(12))):
        for key in keys + keys:
            assert partition_by_key(key, partitions, partitions) == default(
                key, partitions, partitions)


def test_keyless_records_go_to_an_available_partition() -> None:
    """A record without a key lands on one of the available partitions."""
    for _ in range(50):
        assert partition_by_key(None, [0, 1, 2, 3], [1, 3]) in (1, 3)
