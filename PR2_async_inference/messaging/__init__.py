"""The Kafka layer of the async inference service: message formats, topic admin, producer and consumers."""
