-- Issue 14's plans database: 250,000 shipments, one seller owning 100,000 of them and one
-- partner carrying 62,500, built by SQL in a migrated scratch database (see bench/README.md,
-- "Issue 14: plans"). Ids are md5-derived so that every run builds the same rows.
--   psql -v ON_ERROR_STOP=1 -d <db> -f bench/plans_seed.sql
-- The scale benchmark (bench/scale.sh) builds the same shape at other sizes:
--   psql -v shipments=1000000 -v timeline=5 ...
\if :{?shipments}
\else
\set shipments 250000
\endif
\if :{?timeline}
\else
\set timeline 2
\endif

INSERT INTO sellers (id, name, email, password_hash, zip_code, created_at, updated_at,
                     email_verified_at)
SELECT md5('seller' || n)::uuid, 'Seller ' || n, 'seller' || n || '@example.com', 'x', '10001',
       '2025-01-01', '2025-01-01', '2025-01-01'
FROM generate_series(1, 1000) AS n;

-- 100 partners, 20 zip codes each out of 1,000; partner 1 is the big one.
INSERT INTO partners (id, name, email, password_hash, serviceable_zip_codes,
                      max_handling_capacity, status, approved_at, created_at, updated_at)
SELECT md5('partner' || n)::uuid, 'Partner ' || n, 'partner' || n || '@example.com', 'x',
       ARRAY(SELECT lpad(((n * 7 + k * 13) % 1000)::text, 5, '0')
             FROM generate_series(1, 20) AS k),
       1000000, 'approved', '2025-01-01', '2025-01-01', '2025-01-01'
FROM generate_series(1, 100) AS n;

-- Shipment n: seller 1 owns 40% (n % 5 < 2), partner 1 carries 25% (n % 4 = 0); one a minute,
-- newest last. The newest 2,000 are still moving; older ones delivered (97%), cancelled
-- (2.9%) or returned (0.1%).
INSERT INTO shipments (id, tracking_number, seller_id, partner_id, status, content, weight_kg,
                       destination_zip, recipient_name, recipient_email, estimated_delivery,
                       version, last_sequence, delivery_code_attempts, created_at, updated_at)
SELECT md5('shipment' || n)::uuid, 'T' || lpad(n::text, 12, '0'),
       md5('seller' || CASE WHEN n % 5 < 2 THEN 1 ELSE 2 + n % 999 END)::uuid,
       md5('partner' || CASE WHEN n % 4 = 0 THEN 1 ELSE 2 + n % 99 END)::uuid,
       CASE
           WHEN n > :shipments - 2000 THEN (ARRAY['placed', 'in_transit', 'out_for_delivery'])[1 + n % 3]
           WHEN n % 1000 = 7 THEN 'returned'
           WHEN n % 100 < 3 THEN 'cancelled'
           ELSE 'delivered'
       END,
       'Parcel ' || n, 1.5, lpad((n % 1000)::text, 5, '0'), 'Grace Hopper',
       'grace@example.com', timestamptz '2026-01-04' + n * interval '1 minute', 2, :timeline, 0,
       timestamptz '2026-01-01' + n * interval '1 minute',
       timestamptz '2026-01-01' + n * interval '1 minute'
FROM generate_series(1, :shipments) AS n;

UPDATE partners SET active_shipments = counts.active
FROM (SELECT partner_id, count(*) AS active FROM shipments
      WHERE status IN ('placed', 'in_transit', 'out_for_delivery') GROUP BY partner_id) AS counts
WHERE partners.id = counts.partner_id;

-- `timeline` events per shipment: placed, then its current status.
INSERT INTO shipment_events (id, shipment_id, sequence, status, created_at)
SELECT md5('event' || n || '-' || seq)::uuid, md5('shipment' || n)::uuid, seq,
       CASE WHEN seq = 1 THEN 'placed' ELSE s.status END, s.created_at
FROM generate_series(1, :shipments) AS n, generate_series(1, :timeline) AS seq,
     LATERAL (SELECT status, created_at FROM shipments WHERE id = md5('shipment' || n)::uuid) AS s;

-- 30 tags on everybody's shipments; "vip" only on other sellers' (n % 50 = 3 is never seller
-- 1's): absent for the big seller, present in the table.
INSERT INTO tags (name) SELECT 'tag-' || n FROM generate_series(1, 30) AS n;
INSERT INTO tags (name) VALUES ('vip');
-- A link carries copies of its shipment's owners and creation time, as the service writes it.
INSERT INTO shipment_tags (shipment_id, tag_id, seller_id, partner_id, created_at)
SELECT s.id, t.id, s.seller_id, s.partner_id, s.created_at
FROM generate_series(1, :shipments) AS n
JOIN shipments AS s ON s.id = md5('shipment' || n)::uuid
JOIN tags AS t ON t.name = 'tag-' || (1 + n % 30)
             OR (n % 3 = 0 AND t.name = 'tag-' || (1 + (n / 3 + 7) % 30))
             OR (n % 50 = 3 AND t.name = 'vip');

-- The feed: 20,000 events of other sellers first, then one per shipment.
INSERT INTO events (id, seller_id, shipment_id, type, data, created_at)
SELECT md5('feed-early' || n)::uuid, md5('seller' || (2 + n % 999))::uuid, NULL,
       'webhook.test', '{}', timestamptz '2025-12-01' + n * interval '1 second'
FROM generate_series(1, 20000) AS n ORDER BY n;
INSERT INTO events (id, seller_id, shipment_id, type, data, created_at)
SELECT md5('feed' || n)::uuid, s.seller_id, s.id, 'shipment.created', '{}', s.created_at
FROM generate_series(1, :shipments) AS n
JOIN shipments AS s ON s.id = md5('shipment' || n)::uuid ORDER BY n;

-- One sent email per shipment in the outbox.
INSERT INTO outbox_messages (id, kind, shipment_id, payload, status, attempts, next_attempt_at,
                             sent_at, created_at)
SELECT md5('outbox' || n)::uuid, 'email', md5('shipment' || n)::uuid, '{}', 'sent', 1,
       timestamptz '2026-01-01' + n * interval '1 minute',
       timestamptz '2026-01-01' + n * interval '1 minute',
       timestamptz '2026-01-01' + n * interval '1 minute'
FROM generate_series(1, :shipments) AS n;

-- A webhook endpoint for sellers 1 to 10, one delivery per event of theirs.
INSERT INTO webhook_endpoints (id, seller_id, url, secret, enabled, created_at)
SELECT md5('endpoint' || n)::uuid, md5('seller' || n)::uuid, 'https://hooks.example.com/' || n,
       'whsec_x', true, '2025-01-01'
FROM generate_series(1, 10) AS n;
INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, attempt, succeeded,
                                status_code, duration_ms, created_at)
SELECT gen_random_uuid(), w.id, e.id, e.type, 1, true, 200, 12, e.created_at
FROM events AS e JOIN webhook_endpoints AS w ON w.seller_id = e.seller_id;

-- Idempotency keys for one shipment in ten.
INSERT INTO idempotency_keys (seller_id, key, request_fingerprint, shipment_id, response_status,
                              created_at)
SELECT s.seller_id, 'key-' || n, 'f', s.id, 201, s.created_at
FROM generate_series(1, :shipments, 10) AS n
JOIN shipments AS s ON s.id = md5('shipment' || n)::uuid;

VACUUM ANALYZE;
