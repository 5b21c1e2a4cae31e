"""Outbox, email, webhooks and live updates (product.md §6) will live here."""
