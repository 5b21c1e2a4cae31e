"""Shiptrack's application package. Its packages read downwards, lowest first (a module imports
only from its own layer and those below; tests/test_layers.py checks every import):

1. config, errors, logging_setup
2. context      the application context the lifespan builds (settings, engine, Redis, each
                domain's long-lived services looked up by type); knows no domain
3. db, redis_client, rate_limit, pagination, fields (request body base and field types),
   request_body, auth_schemes (the auth schemes and `requires_auth`), pages
4. outbox       the transactional outbox, emails (templates, wording, SMTP or a folder)
5. accounts     sellers and partners, passwords, tokens, API keys, auth dependencies
6. webhooks     the seller's event feed, webhook endpoints and deliveries; shipments record
                their events through webhooks.events.EventPublisher
7. shipments    shipments, public tracking, recipient emails, live updates (live, stream_hub),
                the scenarios test shipments are driven along (simulation)
8. testmode     the test key's own routes: recorded emails, advancing, clearing test data
9. worker, models, demo, partner_commands, health, openapi, reference, reference_assets,
   error_handlers, middleware, embedded
10. main        create_app()
11. cli         shiptrack serve | worker | migrate | demo | openapi
"""
