//! Every SQL statement of the PostgreSQL store, in one place (plain SQL, no ORM).
//!
//! Parameters are bound by tokio-postgres; JSON columns travel as text (`$n::text::jsonb` in,
//! `col::text` out), so no JSON feature of the driver is needed.

/// Channel notified by every commit that makes deliveries due (ingest, redrive, redeliver).
pub const CHANNEL_DUE: &str = "webhookd_due";
/// Channel notified by every change of an endpoint: each node reloads its endpoint cache.
pub const CHANNEL_ENDPOINTS: &str = "webhookd_endpoints";

/// Advisory lock keys ("wh" + purpose), session- or transaction-scoped as their users say.
pub const LOCK_MIGRATE: i64 = 0x7768_0001;
pub const LOCK_LEADER: i64 = 0x7768_0002;

// Schema.

pub const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS webhookd_schema (version bigint NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())";
pub const SCHEMA_VERSION: &str = "SELECT coalesce(max(version), 0) FROM webhookd_schema";
pub const SCHEMA_RECORD: &str = "INSERT INTO webhookd_schema (version) VALUES ($1)";
pub const SCHEMA_TABLE_EXISTS: &str = "SELECT to_regclass('webhookd_schema') IS NOT NULL";
pub const MIGRATE_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

// Settings, nodes, counters.

pub const SETTING_INSERT: &str =
    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
pub const SETTING_GET: &str = "SELECT value FROM settings WHERE name = $1";

pub const NODE_HEARTBEAT: &str = "INSERT INTO nodes (name, last_seen_ms, in_flight) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, in_flight = excluded.in_flight";

pub const COUNTERS_ROW: &str =
    "INSERT INTO counters (node) VALUES ($1) ON CONFLICT (node) DO NOTHING";
pub const COUNTERS_ADD: &str = "UPDATE counters SET events = events + $2, \
     deliveries_created = deliveries_created + $3, deliveries_succeeded = deliveries_succeeded + $4, \
     deliveries_dead = deliveries_dead + $5, deliveries_cancelled = deliveries_cancelled + $6, \
     attempts_failed = attempts_failed + $7, attempts_succeeded = attempts_succeeded + $8, \
     pending = pending + $9, retrying = retrying + $10, dead_letters = dead_letters + $11 \
     WHERE node = $1";
pub const COUNTERS_SUM: &str = "SELECT coalesce(sum(events), 0)::bigint, \
     coalesce(sum(deliveries_created), 0)::bigint, coalesce(sum(deliveries_succeeded), 0)::bigint, \
     coalesce(sum(deliveries_dead), 0)::bigint, coalesce(sum(deliveries_cancelled), 0)::bigint, \
     coalesce(sum(attempts_failed), 0)::bigint, coalesce(sum(attempts_succeeded), 0)::bigint, \
     coalesce(sum(pending), 0)::bigint, coalesce(sum(retrying), 0)::bigint, \
     coalesce(sum(dead_letters), 0)::bigint FROM counters";

pub const NOTIFY: &str = "SELECT pg_notify($1, '')";
pub const LEADER_TRY: &str = "SELECT pg_try_advisory_lock($1)";

// Endpoints.

/// The columns [`super::rows::endpoint`] reads, in its order.
pub const ENDPOINT_COLUMNS: &str =
    "num, partner_id, environment, url, event_types::text, description, \
     headers::text, ordered, max_in_flight, rate_limit_per_second, enabled, disabled_reason, \
     created_at_ms, secrets::text";
pub const ENDPOINTS_ALL: &str =
    "SELECT num, partner_id, environment, url, event_types::text, description, \
     headers::text, ordered, max_in_flight, rate_limit_per_second, enabled, disabled_reason, \
     created_at_ms, secrets::text FROM endpoints ORDER BY num";
pub const ENDPOINT_LOCK: &str =
    "SELECT num, partner_id, environment, url, event_types::text, description, \
     headers::text, ordered, max_in_flight, rate_limit_per_second, enabled, disabled_reason, \
     created_at_ms, secrets::text FROM endpoints WHERE num = $1 FOR UPDATE";
pub const ENDPOINT_SHARE: &str =
    "SELECT num, partner_id, environment, url, event_types::text, description, \
     headers::text, ordered, max_in_flight, rate_limit_per_second, enabled, disabled_reason, \
     created_at_ms, secrets::text FROM endpoints WHERE num = $1 FOR SHARE";
pub const ENDPOINT_NEXT_NUM: &str = "SELECT nextval('endpoint_seq')";
pub const ENDPOINT_INSERT: &str = "INSERT INTO endpoints (num, partner_id, environment, url, event_types, \
     description, headers, ordered, max_in_flight, rate_limit_per_second, enabled, disabled_reason, \
     created_at_ms, secrets) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7::text::jsonb, $8, $9, \
     $10, $11, $12, $13, $14::text::jsonb)";
pub const ENDPOINT_UPDATE: &str =
    "UPDATE endpoints SET partner_id = $2, environment = $3, url = $4, \
     event_types = $5::text::jsonb, description = $6, headers = $7::text::jsonb, ordered = $8, \
     max_in_flight = $9, rate_limit_per_second = $10, enabled = $11, disabled_reason = $12, \
     created_at_ms = $13, secrets = $14::text::jsonb WHERE num = $1";
pub const ENDPOINT_SECRETS_UPDATE: &str =
    "UPDATE endpoints SET secrets = $2::text::jsonb WHERE num = $1";
pub const ENDPOINT_HEALTH_RESET: &str = "UPDATE endpoints SET consecutive_failures = 0, \
     last_status_code = NULL, last_success_at_ms = NULL, last_failure_at_ms = NULL, \
     failing_since_ms = NULL, last_error = NULL WHERE num = $1";
pub const ENDPOINT_DELETE: &str = "DELETE FROM endpoints WHERE num = $1";
pub const ENDPOINT_HEALTH: &str =
    "SELECT consecutive_failures, last_status_code, last_success_at_ms, \
     last_failure_at_ms, failing_since_ms, last_error FROM endpoints WHERE num = $1";
/// Endpoints of a settle group, locked in one order (endpoints before deliveries, everywhere).
pub const ENDPOINTS_LOCK_HEALTH: &str = "SELECT num, enabled, partner_id, consecutive_failures, \
     last_status_code, last_success_at_ms, last_failure_at_ms, failing_since_ms, last_error \
     FROM endpoints WHERE num = ANY($1) ORDER BY num FOR UPDATE";
pub const ENDPOINTS_HEALTH_UPDATE: &str = "UPDATE endpoints e SET consecutive_failures = u.cf, \
     last_status_code = u.code, last_success_at_ms = u.ok_at, last_failure_at_ms = u.fail_at, \
     failing_since_ms = u.since, last_error = u.err, enabled = u.enabled, \
     disabled_reason = coalesce(u.reason, e.disabled_reason) \
     FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[], \
     $7::text[], $8::bool[], $9::text[]) AS u(num, cf, code, ok_at, fail_at, since, err, enabled, reason) \
     WHERE e.num = u.num";
/// Pending deliveries of one endpoint, leaving out attempts under way on other nodes (unexpired
/// claims not `$3`'s); this node's own are counted, its scheduler takes them off.
pub const ENDPOINT_PENDING: &str = "SELECT count(*) FROM deliveries WHERE endpoint_num = $1 \
     AND status = 0 AND NOT coalesce(lease_until_ms > $2 AND lease_owner <> $3, false)";

// Events.

pub const EVENT_COLUMNS: &str = "seq, id, partner_id, environment, event_type, created_at, \
     received_at_ms, payload, content_hash";
pub const EVENTS_KNOWN: &str = "SELECT id, content_hash, deliveries FROM events WHERE id = ANY($1)";
/// Locks the ids a group is about to insert, in one global order (transaction-scoped advisory
/// locks in the two-key space, apart from the one-key locks of migrations and the leader): two
/// nodes inserting overlapping ids in different orders would otherwise deadlock on the unique index.
pub const EVENT_IDS_LOCK: &str = "SELECT count(pg_advisory_xact_lock(7, h)) FROM (SELECT DISTINCT \
     hashtext(i) AS h FROM unnest($1::text[]) AS i ORDER BY 1) AS s";
pub const EVENTS_INSERT: &str = "INSERT INTO events (id, partner_id, environment, event_type, created_at, \
     received_at_ms, payload, content_hash, deliveries) \
     SELECT i, p, en, t, c, r, pl, h, n FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::text[], $6::bigint[], $7::bytea[], $8::bytea[], $9::int[]) WITH ORDINALITY \
     AS u(i, p, en, t, c, r, pl, h, n, ord) ORDER BY ord ON CONFLICT (id) DO NOTHING RETURNING id, seq";
pub const DELIVERIES_INSERT: &str =
    "INSERT INTO deliveries (event_seq, endpoint_num, status, due_ms, \
     created_at_ms) SELECT e, n, 0, d, d FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
     WITH ORDINALITY AS u(e, n, d, ord) ORDER BY ord";
pub const EVENT_BY_SEQ: &str = "SELECT seq, id, partner_id, environment, event_type, created_at, \
     received_at_ms, payload, content_hash FROM events WHERE seq = $1";
pub const EVENT_BY_ID: &str = "SELECT seq, id, partner_id, environment, event_type, created_at, \
     received_at_ms, payload, content_hash FROM events WHERE id = $1";
pub const EVENTS_FROM: &str = "SELECT seq, id, partner_id, environment, event_type, created_at, \
     received_at_ms, payload, content_hash FROM events WHERE seq > $1 ORDER BY seq LIMIT $2";
pub const EVENT_HEAD_LOCK: &str =
    "SELECT partner_id, environment, id FROM events WHERE seq = $1 FOR SHARE";
pub const EVENT_REDELIVERED: &str = "UPDATE events SET redelivered_at_ms = $2 WHERE seq = $1";

// Deliveries.

/// The columns [`super::rows::delivery`] reads, in its order.
pub const DELIVERY_COLUMNS: &str = "seq, event_seq, endpoint_num, status, due_ms, attempts::text, \
     attempts_before_redrive, created_at_ms";
pub const DELIVERIES_OF_EVENT: &str = "SELECT seq, event_seq, endpoint_num, status, due_ms, \
     attempts::text, attempts_before_redrive, created_at_ms FROM deliveries WHERE event_seq = $1 \
     ORDER BY seq";
pub const DELIVERY_OF_EVENT: &str = "SELECT seq, event_seq, endpoint_num, status, due_ms, \
     attempts::text, attempts_before_redrive, created_at_ms FROM deliveries \
     WHERE event_seq = $1 AND seq = $2";
pub const DELIVERY_INSERT_ONE: &str =
    "INSERT INTO deliveries (event_seq, endpoint_num, status, due_ms, \
     created_at_ms) VALUES ($1, $2, 0, $3, $3)";
/// A settle group's deliveries, locked in seq order, after their endpoints.
pub const DELIVERIES_LOCK: &str =
    "SELECT seq, event_seq, endpoint_num, status, due_ms, attempts::text, \
     attempts_before_redrive, created_at_ms, fence, retry FROM deliveries WHERE seq = ANY($1) \
     ORDER BY seq FOR UPDATE";
pub const DELIVERY_ENDPOINTS: &str =
    "SELECT DISTINCT endpoint_num FROM deliveries WHERE seq = ANY($1)";
pub const SETTLE_ASYNC_COMMIT: &str = "SET LOCAL synchronous_commit TO off";
pub const DELIVERIES_SETTLE: &str = "UPDATE deliveries d SET status = u.status, due_ms = u.due, \
     retry = u.retry, attempts = d.attempts || u.attempt::jsonb, lease_owner = NULL, \
     lease_until_ms = NULL FROM unnest($1::bigint[], $2::smallint[], $3::bigint[], $4::bool[], \
     $5::text[]) AS u(seq, status, due, retry, attempt) WHERE d.seq = u.seq";
pub const DEAD_LETTERS_INSERT: &str =
    "INSERT INTO dead_letters (seq, delivery_seq, event_seq, endpoint_num, \
     attempts, last_status_code, last_error, first_attempt_at_ms, dead_at_ms, reason) \
     SELECT nextval('dead_letter_seq'), * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], \
     $4::int[], $5::int[], $6::text[], $7::bigint[], $8::bigint[], $9::text[]) \
     RETURNING endpoint_num, seq";
pub const DELIVERIES_CANCEL_ENDPOINT: &str = "UPDATE deliveries SET status = 3, due_ms = NULL, \
     lease_owner = NULL, lease_until_ms = NULL WHERE endpoint_num = $1 AND status = 0 RETURNING retry";
pub const DELIVERY_CANCEL: &str =
    "UPDATE deliveries SET status = 3, due_ms = NULL, lease_owner = NULL, \
     lease_until_ms = NULL WHERE seq = $1 AND status = 0 RETURNING retry, endpoint_num";

// Claims.

/// Locks an endpoint's row for one claim: two nodes claiming for one endpoint take turns.
pub const CLAIM_ENDPOINT: &str = "SELECT enabled, ordered, max_in_flight, rate_limit_per_second, \
     rate_tokens, rate_refilled_ms FROM endpoints WHERE num = $1 FOR UPDATE";
pub const CLAIM_LEASED: &str =
    "SELECT count(*) FROM deliveries WHERE endpoint_num = $1 AND status = 0 \
     AND lease_until_ms > $2";
pub const CLAIM_HEAD: &str = "SELECT d.seq, d.event_seq, d.endpoint_num, d.status, d.due_ms, \
     d.attempts::text, d.attempts_before_redrive, d.created_at_ms, d.retry \
     FROM deliveries d WHERE d.endpoint_num = $1 AND d.status = 0 ORDER BY d.seq LIMIT 1 \
     FOR UPDATE";
/// Due deliveries no node has a claim on (an expired claim is [`CLAIM_TAKEOVER`]'s).
pub const CLAIM_DUE: &str = "SELECT d.seq, d.event_seq, d.endpoint_num, d.status, d.due_ms, \
     d.attempts::text, d.attempts_before_redrive, d.created_at_ms, d.retry \
     FROM deliveries d WHERE d.endpoint_num = $1 AND d.status = 0 AND d.due_ms <= $2 \
     AND d.lease_until_ms IS NULL ORDER BY d.due_ms, d.seq LIMIT $3 FOR UPDATE SKIP LOCKED";
/// Claims whose lease has run out (their node died or stalled), oldest lease first.
pub const CLAIM_TAKEOVER: &str = "SELECT d.seq, d.event_seq, d.endpoint_num, d.status, d.due_ms, \
     d.attempts::text, d.attempts_before_redrive, d.created_at_ms, d.retry \
     FROM deliveries d WHERE d.endpoint_num = $1 AND d.status = 0 \
     AND d.lease_until_ms IS NOT NULL AND d.lease_until_ms <= $2 \
     ORDER BY d.lease_until_ms LIMIT $3 FOR UPDATE SKIP LOCKED";
pub const CLAIM_TAKE: &str =
    "UPDATE deliveries SET lease_owner = $2, lease_until_ms = $3, due_ms = $3, \
     fence = fence + 1 WHERE seq = ANY($1) RETURNING seq, fence";
pub const CLAIM_BUCKET: &str =
    "UPDATE endpoints SET rate_tokens = $2, rate_refilled_ms = $3 WHERE num = $1";
pub const CLAIM_NEXT_DUE: &str = "SELECT min(due_ms) FROM deliveries WHERE endpoint_num = $1 \
     AND status = 0 AND due_ms > $2";
pub const CLAIM_EVENTS: &str = "SELECT seq, id, partner_id, environment, event_type, created_at, \
     received_at_ms, payload, content_hash FROM events WHERE seq = ANY($1)";
/// Ends an unsettled claim (a settle clears `lease_owner`, so a settled one is left alone).
pub const CLAIM_RELEASE: &str = "UPDATE deliveries SET lease_owner = NULL, lease_until_ms = NULL, \
     due_ms = $3 WHERE seq = $1 AND fence = $2 AND status = 0 AND lease_owner = $4";
pub const QUEUE_HEAD: &str =
    "SELECT min(due_ms) FROM deliveries WHERE endpoint_num = $1 AND status = 0";
pub const QUEUE_HEAD_ORDERED: &str = "SELECT due_ms FROM deliveries WHERE endpoint_num = $1 \
     AND status = 0 ORDER BY seq LIMIT 1";
pub const IN_FLIGHT: &str =
    "SELECT count(*) FROM deliveries WHERE status = 0 AND lease_until_ms > $1";
pub const IN_FLIGHT_SPLIT: &str = "SELECT count(*), count(*) FILTER (WHERE retry) FROM deliveries \
     WHERE status = 0 AND lease_until_ms > $1";
pub const OLDEST_PENDING: &str = "SELECT min(created_at_ms) FROM deliveries WHERE status = 0";

// Dead letters.

pub const DEAD_LETTER_COLUMNS: &str = "seq, delivery_seq, event_seq, endpoint_num, attempts, \
     last_status_code, last_error, first_attempt_at_ms, dead_at_ms, reason";
pub const DEAD_LETTER: &str = "SELECT seq, delivery_seq, event_seq, endpoint_num, attempts, \
     last_status_code, last_error, first_attempt_at_ms, dead_at_ms, reason FROM dead_letters \
     WHERE seq = $1";
pub const DEAD_LETTERS_FROM: &str = "SELECT seq, delivery_seq, event_seq, endpoint_num, attempts, \
     last_status_code, last_error, first_attempt_at_ms, dead_at_ms, reason FROM dead_letters \
     WHERE seq > $1 ORDER BY seq LIMIT $2";
pub const DEAD_LETTERS_MATCHING: &str =
    "SELECT dl.seq, dl.delivery_seq, dl.event_seq, dl.endpoint_num, \
     dl.attempts, dl.last_status_code, dl.last_error, dl.first_attempt_at_ms, dl.dead_at_ms, \
     dl.reason FROM dead_letters dl LEFT JOIN events e ON e.seq = dl.event_seq WHERE dl.seq > $1 \
     AND ($2::bigint IS NULL OR dl.endpoint_num = $2) AND ($3::text IS NULL OR e.event_type = $3) \
     ORDER BY dl.seq LIMIT $4";
pub const DEAD_LETTER_LOCK: &str = "SELECT seq, delivery_seq, event_seq, endpoint_num, attempts, \
     last_status_code, last_error, first_attempt_at_ms, dead_at_ms, reason FROM dead_letters \
     WHERE seq = $1 FOR UPDATE";
pub const DEAD_LETTER_DELETE: &str = "DELETE FROM dead_letters WHERE seq = $1";
pub const DELIVERY_LOCK_ONE: &str =
    "SELECT status, attempts_before_redrive, jsonb_array_length(attempts), \
     endpoint_num FROM deliveries WHERE seq = $1 FOR UPDATE";
pub const DELIVERY_REDRIVE: &str = "UPDATE deliveries SET status = 0, attempts_before_redrive = \
     jsonb_array_length(attempts), due_ms = $2, retry = false, lease_owner = NULL, \
     lease_until_ms = NULL WHERE seq = $1";
pub const ENDPOINT_AUDIENCE: &str =
    "SELECT partner_id, environment FROM endpoints WHERE num = $1 FOR SHARE";

// Retention.

/// Final events received before $1, not redelivered since $3; the outer conditions are checked
/// again on a row a concurrent redeliver changed.
pub const PURGE_EVENTS: &str = "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e \
     WHERE e.received_at_ms < $1 AND (e.redelivered_at_ms IS NULL OR e.redelivered_at_ms < $3) \
     AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.status = 0) \
     ORDER BY e.seq LIMIT $2) AND (redelivered_at_ms IS NULL OR redelivered_at_ms < $3)";
pub const PURGE_DEAD_LETTERS: &str =
    "DELETE FROM dead_letters WHERE seq IN (SELECT seq FROM dead_letters \
     WHERE dead_at_ms < $1 ORDER BY seq LIMIT $2)";

// Partner tokens, scoped reads and endpoint stats (contract section 9).

/// The columns [`super::partners`] reads a token from, in its order.
pub const TOKEN_COLUMNS: &str = "num, hash, partner_id, environment, read_only, description, \
     created_at_ms, expires_at_ms, revoked_at_ms";
pub const TOKEN_INSERT: &str = "INSERT INTO partner_tokens (num, hash, partner_id, environment, \
     read_only, description, created_at_ms, expires_at_ms, revoked_at_ms) \
     VALUES (nextval('token_seq'), $1, $2, $3, $4, $5, $6, $7, NULL) RETURNING num";
pub const TOKEN_BY_HASH: &str =
    "SELECT num, hash, partner_id, environment, read_only, description, \
     created_at_ms, expires_at_ms, revoked_at_ms FROM partner_tokens WHERE hash = $1";
pub const TOKENS: &str = "SELECT num, hash, partner_id, environment, read_only, description, \
     created_at_ms, expires_at_ms, revoked_at_ms FROM partner_tokens \
     WHERE ($1::text IS NULL OR partner_id = $1) ORDER BY num";
/// Revokes once: a token revoked before keeps its first time.
pub const TOKEN_REVOKE: &str = "UPDATE partner_tokens \
     SET revoked_at_ms = coalesce(revoked_at_ms, $2) WHERE num = $1 RETURNING num, hash, \
     partner_id, environment, read_only, description, created_at_ms, expires_at_ms, revoked_at_ms";
pub const TOKENS_PURGE: &str =
    "DELETE FROM partner_tokens WHERE coalesce(revoked_at_ms, expires_at_ms) < $1";

/// Events newest first before seq $1, within a partner ($2, $3: partner and environment, either
/// null for any), with a delivery to endpoint $4 and of type $5 when given.
pub const EVENTS_MATCHING: &str = "SELECT e.seq, e.id, e.partner_id, e.environment, e.event_type, \
     e.created_at, e.received_at_ms, e.payload, e.content_hash FROM events e \
     WHERE e.seq < $1 AND ($2::text IS NULL OR e.partner_id = $2) \
     AND ($3::text IS NULL OR e.environment = $3) AND ($5::text IS NULL OR e.event_type = $5) \
     AND ($4::bigint IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq \
     AND d.endpoint_num = $4)) ORDER BY e.seq DESC LIMIT $6";
/// Dead letters after seq $1 of endpoint $2 and event type $3 (null: any), within a partner ($4)
/// and environment ($5): the endpoint's, or the event's once the endpoint is gone.
pub const DEAD_LETTERS_SCOPED: &str =
    "SELECT dl.seq, dl.delivery_seq, dl.event_seq, dl.endpoint_num, \
     dl.attempts, dl.last_status_code, dl.last_error, dl.first_attempt_at_ms, dl.dead_at_ms, \
     dl.reason FROM dead_letters dl LEFT JOIN events e ON e.seq = dl.event_seq \
     LEFT JOIN endpoints ep ON ep.num = dl.endpoint_num WHERE dl.seq > $1 \
     AND ($2::bigint IS NULL OR dl.endpoint_num = $2) AND ($3::text IS NULL OR e.event_type = $3) \
     AND ($4::text IS NULL OR coalesce(ep.partner_id, e.partner_id) = $4) \
     AND ($5::text IS NULL OR coalesce(ep.environment, e.environment) = $5) \
     ORDER BY dl.seq LIMIT $6";

/// Adds a settle group's attempts to their endpoints' hours ($5: the latency counts as
/// comma-separated text, added element by element).
pub const STATS_ADD: &str = "INSERT INTO endpoint_stats AS s (endpoint_num, hour, succeeded, \
     failed, latency) SELECT n, h, ok, bad, string_to_array(lat, ',')::bigint[] \
     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[]) \
     AS u(n, h, ok, bad, lat) ORDER BY n, h \
     ON CONFLICT (endpoint_num, hour) DO UPDATE SET succeeded = s.succeeded + excluded.succeeded, \
     failed = s.failed + excluded.failed, latency = (SELECT array_agg(coalesce(a, 0) + \
     coalesce(b, 0) ORDER BY i) FROM unnest(s.latency, excluded.latency) WITH ORDINALITY \
     AS x(a, b, i))";
pub const STATS_OF_ENDPOINT: &str = "SELECT hour, succeeded, failed, latency FROM endpoint_stats \
     WHERE endpoint_num = $1 AND hour BETWEEN $2 AND $3 ORDER BY hour";
pub const STATS_PURGE: &str = "DELETE FROM endpoint_stats s WHERE s.hour < $1 \
     OR NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.num = s.endpoint_num)";
// Migration from sled (`preflix-webhookd migrate --to-postgres`): rows copied with their numbers.

/// What the database already holds of what a migration copies; all zero means empty.
pub const IMPORT_HELD: &str =
    "SELECT (SELECT count(*) FROM endpoints), (SELECT count(*) FROM events), \
     (SELECT count(*) FROM deliveries), (SELECT count(*) FROM dead_letters), \
     (SELECT count(*) FROM partner_tokens)";
pub const IMPORT_ENDPOINT: &str = "INSERT INTO endpoints (num, partner_id, environment, url, event_types, \
     description, headers, ordered, max_in_flight, rate_limit_per_second, enabled, disabled_reason, \
     created_at_ms, secrets, consecutive_failures, last_status_code, last_success_at_ms, \
     last_failure_at_ms, failing_since_ms, last_error) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, \
     $7::text::jsonb, $8, $9, $10, $11, $12, $13, $14::text::jsonb, $15, $16, $17, $18, $19, $20)";
pub const IMPORT_EVENTS: &str = "INSERT INTO events (seq, id, partner_id, environment, event_type, \
     created_at, received_at_ms, payload, content_hash, deliveries) SELECT * FROM unnest($1::bigint[], \
     $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bytea[], \
     $9::bytea[], $10::int[])";
pub const IMPORT_DELIVERIES: &str = "INSERT INTO deliveries (seq, event_seq, endpoint_num, status, due_ms, \
     retry, attempts, attempts_before_redrive, created_at_ms) SELECT s, e, n, st, d, r, a::jsonb, b, c \
     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::smallint[], $5::bigint[], $6::bool[], \
     $7::text[], $8::int[], $9::bigint[]) AS u(s, e, n, st, d, r, a, b, c)";
pub const IMPORT_DEAD_LETTERS: &str = "INSERT INTO dead_letters (seq, delivery_seq, event_seq, \
     endpoint_num, attempts, last_status_code, last_error, first_attempt_at_ms, dead_at_ms, reason) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::int[], \
     $6::int[], $7::text[], $8::bigint[], $9::bigint[], $10::text[])";
/// Every sequence past the highest number copied ($1: the last one handed out).
pub const IMPORT_SEQUENCES: &str = "SELECT setval('event_seq', $1), setval('delivery_seq', $1), \
     setval('endpoint_seq', $1), setval('dead_letter_seq', $1), setval('token_seq', $1)";
pub const IMPORT_TOKEN: &str = "INSERT INTO partner_tokens (num, hash, partner_id, environment, \
     read_only, description, created_at_ms, expires_at_ms, revoked_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub const IMPORT_STATS: &str =
    "INSERT INTO endpoint_stats (endpoint_num, hour, succeeded, failed, \
     latency) VALUES ($1, $2, $3, $4, $5)";
/// The copied store's running totals, as a counters row of their own (`/status` sums the rows).
pub const IMPORT_COUNTERS: &str = "INSERT INTO counters (node, events, deliveries_created, \
     deliveries_succeeded, deliveries_dead, deliveries_cancelled, attempts_failed, \
     attempts_succeeded, pending, retrying, dead_letters) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
     $9, $10, $11)";
/// A setting the copied install generated (its admin token, its notification secret) replaces one a
/// node may have generated into this otherwise empty database.
pub const IMPORT_SETTING: &str = "INSERT INTO settings (name, value) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET value = excluded.value";
