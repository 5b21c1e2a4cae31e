"""API keys: long-lived, scoped credentials an integration sends instead of an access token
(product.md §11.1). Each belongs to one seller or partner, is shown once, and is stored only as
a SHA-256 digest behind a short lookup prefix."""
