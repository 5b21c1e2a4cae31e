"""Test mode (product.md §11.2): what a seller's test key can do beyond the live routes, which
it shares: read the emails its test shipments would have sent, drive a test shipment through a
scenario, and clear its test data. Above shipments and webhooks, which it uses."""
