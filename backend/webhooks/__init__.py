"""The seller's event feed and webhooks: events recorded in the transaction of the change behind
them, endpoints, signed deliveries through the outbox, the delivery log."""
