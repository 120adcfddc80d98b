"""factbus amqp adapter (in progress)."""
