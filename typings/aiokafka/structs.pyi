# Type stubs for aiokafka 0.14's record and offset structures (see __init__.pyi).
from typing import NamedTuple

from aiokafka import TopicPartition as TopicPartition

class OffsetAndMetadata(NamedTuple):
    offset: int
    metadata: str

class RecordMetadata(NamedTuple):
    topic: str
    partition: int
    topic_partition: TopicPartition
    offset: int
    timestamp: int | None
    timestamp_type: int
    log_start_offset: int | None

class OffsetAndTimestamp(NamedTuple):
    offset: int
    timestamp: int | None
