"""Code every Anting service imports: the wire contract, Kafka clients, metrics, HTTP helpers."""
