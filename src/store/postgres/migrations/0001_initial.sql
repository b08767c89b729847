-- Schema 1 of preflix-webhookd's PostgreSQL store. Applied once, in one transaction, by
-- store::postgres::schema under an advisory lock. Numbers come from sequences; times are unix ms.

CREATE SEQUENCE event_seq;
CREATE SEQUENCE delivery_seq;
CREATE SEQUENCE endpoint_seq;
CREATE SEQUENCE dead_letter_seq;

-- What a single node would generate into storage.dir (admin token, notification secret).
CREATE TABLE settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE endpoints (
    num                   bigint PRIMARY KEY,
    partner_id            text NOT NULL,
    environment           text NOT NULL,
    url                   text NOT NULL,
    event_types           jsonb NOT NULL,
    description           text NOT NULL,
    headers               jsonb NOT NULL,
    ordered               boolean NOT NULL,
    max_in_flight         integer NOT NULL,
    rate_limit_per_second integer,
    enabled               boolean NOT NULL,
    disabled_reason       text,
    created_at_ms         bigint NOT NULL,
    -- The secrets as stored (store::codec::StoredSecret, JSON): sealed when a master key is set.
    secrets               jsonb NOT NULL,
    -- Delivery health (model::EndpointHealth).
    consecutive_failures  integer NOT NULL DEFAULT 0,
    last_status_code      integer,
    last_success_at_ms    bigint,
    last_failure_at_ms    bigint,
    failing_since_ms      bigint,
    last_error            text,
    -- The cluster-wide token bucket of rate_limit_per_second.
    rate_tokens           double precision NOT NULL DEFAULT 0,
    rate_refilled_ms      bigint NOT NULL DEFAULT 0
);

CREATE TABLE events (
    seq               bigint PRIMARY KEY DEFAULT nextval('event_seq'),
    id                text NOT NULL UNIQUE,
    partner_id        text NOT NULL,
    environment       text NOT NULL,
    event_type        text NOT NULL,
    created_at        text NOT NULL,
    received_at_ms    bigint NOT NULL,
    payload           bytea NOT NULL,
    content_hash      bytea NOT NULL,
    -- How many deliveries the first ingest created: repeated in duplicate answers.
    deliveries        integer NOT NULL,
    -- When deliveries were last added (redeliver, recover): retention leaves such events alone.
    redelivered_at_ms bigint
);

-- status: 0 pending, 1 succeeded, 2 dead, 3 cancelled.
-- due_ms: when a pending delivery may next be claimed. A claim moves it to the lease's end, so a
-- dead node's claims come due again by themselves; fence grows at every claim.
CREATE TABLE deliveries (
    seq                     bigint PRIMARY KEY DEFAULT nextval('delivery_seq'),
    event_seq               bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    endpoint_num            bigint NOT NULL,
    status                  smallint NOT NULL,
    due_ms                  bigint,
    retry                   boolean NOT NULL DEFAULT false,
    attempts                jsonb NOT NULL DEFAULT '[]',
    attempts_before_redrive integer NOT NULL DEFAULT 0,
    created_at_ms           bigint NOT NULL,
    lease_owner             text,
    lease_until_ms          bigint,
    fence                   bigint NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_of_event ON deliveries (event_seq);
CREATE INDEX deliveries_due ON deliveries (endpoint_num, due_ms, seq) WHERE status = 0;
CREATE INDEX deliveries_head ON deliveries (endpoint_num, seq) WHERE status = 0;
CREATE INDEX deliveries_leased ON deliveries (endpoint_num, lease_until_ms)
    WHERE status = 0 AND lease_until_ms IS NOT NULL;

CREATE TABLE dead_letters (
    seq                 bigint PRIMARY KEY,
    delivery_seq        bigint NOT NULL,
    event_seq           bigint NOT NULL,
    endpoint_num        bigint NOT NULL,
    attempts            integer NOT NULL,
    last_status_code    integer,
    last_error          text,
    first_attempt_at_ms bigint,
    dead_at_ms          bigint NOT NULL,
    reason              text NOT NULL
);

-- Running totals, one row per node (no row every node's commits contend for); /status sums them.
CREATE TABLE counters (
    node                 text PRIMARY KEY,
    events               bigint NOT NULL DEFAULT 0,
    deliveries_created   bigint NOT NULL DEFAULT 0,
    deliveries_succeeded bigint NOT NULL DEFAULT 0,
    deliveries_dead      bigint NOT NULL DEFAULT 0,
    deliveries_cancelled bigint NOT NULL DEFAULT 0,
    attempts_failed      bigint NOT NULL DEFAULT 0,
    attempts_succeeded   bigint NOT NULL DEFAULT 0,
    pending              bigint NOT NULL DEFAULT 0,
    retrying             bigint NOT NULL DEFAULT 0,
    dead_letters         bigint NOT NULL DEFAULT 0
);

CREATE TABLE nodes (
    name         text PRIMARY KEY,
    last_seen_ms bigint NOT NULL,
    in_flight    integer NOT NULL DEFAULT 0
);
