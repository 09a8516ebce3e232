"""Callbacks to the registration portal: what it is told, its durable outbox, its client."""
