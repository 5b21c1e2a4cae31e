"""Shiptrack's application package. Its packages read downwards, lowest first (a module imports
only from its own layer and those below; tests/test_layers.py checks every import):

1. config, errors, logging_setup
2. db, redis_client, rate_limit, pagination, fields (request body base and field types),
   request_body, auth_schemes (the auth schemes and `requires_auth`), pages
3. outbox       the transactional outbox, emails (templates, wording, SMTP or a folder)
4. accounts     sellers and partners, passwords, tokens, auth dependencies
5. webhooks     the seller's event feed, webhook endpoints and deliveries; shipments record
                their events through webhooks.events.EventPublisher
6. shipments    shipments, public tracking, recipient emails, live updates (live, stream_hub)
7. worker, models, demo, partner_commands, health, openapi, reference, reference_assets,
   error_handlers, middleware, embedded
8. main         create_app()
9. cli          shiptrack serve | worker | migrate | demo | openapi
"""
