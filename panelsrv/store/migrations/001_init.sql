-- 001_init: panels, users, keys, wallets and the ledger, catalog, orders, refills,
-- idempotency records and the worker's outbox.
--
-- Money is bigint minor units of 1e-5 of the panel currency (panelsrv/money.py), never floats.
-- The ledger is append-only (a trigger refuses UPDATE/DELETE/TRUNCATE); every wallet equals the
-- sum of its entries, which `panelsrv audit` checks.

CREATE TABLE panels (
    id          bigserial PRIMARY KEY,
    domain      text NOT NULL UNIQUE CHECK (domain = lower(domain) AND domain <> ''),
    currency    text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    settings    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id           bigserial PRIMARY KEY,
    panel_id     bigint NOT NULL REFERENCES panels,
    email        text NOT NULL UNIQUE CHECK (email = lower(email) AND email LIKE '%_@_%'),
    discount_bp  integer NOT NULL DEFAULT 0 CHECK (discount_bp BETWEEN 0 AND 10000),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a key is stored; `prefix` (its first characters) is for display/revoke.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users,
    hash        bytea NOT NULL UNIQUE CHECK (length(hash) = 32),
    prefix      text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_active ON api_keys (user_id) WHERE revoked_at IS NULL;

-- One wallet per user. `recent_orders` holds the times of the user's orders in the last minute:
-- the order-placement ceiling is checked in the same UPDATE that debits (exact on every host).
CREATE TABLE wallets (
    user_id        bigint PRIMARY KEY REFERENCES users,
    balance        bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    version        bigint NOT NULL DEFAULT 0,
    recent_orders  timestamptz[] NOT NULL DEFAULT '{}'
);

CREATE TABLE providers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name <> ''),
    url         text NOT NULL CHECK (url ~ '^https?://'),
    api_key     text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    -- Set by `service import`: the worker's periodic price sync reapplies them.
    markup_bp   integer CHECK (markup_bp >= 0),
    import_category text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A service with panel_id NULL is offered on every panel; with a panel_id only on that panel,
-- where `local_id` (unique per panel) is the id its customers see.
CREATE TABLE services (
    id                bigserial PRIMARY KEY,
    panel_id          bigint REFERENCES panels,
    local_id          bigint CHECK (local_id > 0),
    name              text NOT NULL CHECK (name <> ''),
    type              text NOT NULL DEFAULT 'default' CHECK (type IN (
                          'default', 'Package', 'Custom Comments', 'Custom Comments Package',
                          'Mentions', 'Mentions with Hashtags', 'Mentions Custom List',
                          'Mentions Hashtag', 'Mentions User Followers', 'Mentions Media Likers',
                          'Subscriptions', 'Poll', 'Comment Likes', 'Comment Replies')),
    category          text NOT NULL DEFAULT '',
    rate              bigint NOT NULL CHECK (rate >= 0),
    min_qty           bigint NOT NULL CHECK (min_qty >= 1),
    max_qty           bigint NOT NULL,
    dripfeed          boolean NOT NULL DEFAULT false,
    refill            boolean NOT NULL DEFAULT false,
    cancel            boolean NOT NULL DEFAULT false,
    avg_time          integer NOT NULL DEFAULT 0 CHECK (avg_time >= 0),
    active            boolean NOT NULL DEFAULT true,
    hidden            boolean NOT NULL DEFAULT false,
    provider_id       bigint REFERENCES providers,
    provider_service  text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (max_qty >= min_qty),
    CHECK (local_id IS NULL OR panel_id IS NOT NULL),
    CHECK ((provider_id IS NULL) = (provider_service IS NULL))
);
CREATE UNIQUE INDEX services_local_id ON services (panel_id, local_id) WHERE local_id IS NOT NULL;
CREATE UNIQUE INDEX services_upstream ON services (provider_id, provider_service)
    WHERE provider_id IS NOT NULL AND panel_id IS NULL;

CREATE TABLE user_rates (
    user_id     bigint NOT NULL REFERENCES users,
    service_id  bigint NOT NULL REFERENCES services,
    rate        bigint NOT NULL CHECK (rate >= 0),
    PRIMARY KEY (user_id, service_id)
);

CREATE TABLE orders (
    id                bigserial PRIMARY KEY,
    user_id           bigint NOT NULL REFERENCES users,
    panel_id          bigint NOT NULL REFERENCES panels,
    service_id        bigint NOT NULL REFERENCES services,
    provider_id       bigint REFERENCES providers,
    link              text NOT NULL DEFAULT '',
    quantity          bigint NOT NULL CHECK (quantity >= 1),
    runs              integer NOT NULL DEFAULT 1 CHECK (runs >= 1),
    run_interval      integer NOT NULL DEFAULT 0 CHECK (run_interval >= 0),
    extras            jsonb NOT NULL DEFAULT '{}',
    charge            bigint NOT NULL CHECK (charge >= 0),
    status            text NOT NULL DEFAULT 'Pending' CHECK (status IN (
                          'Pending', 'In progress', 'Completed', 'Partial', 'Canceled',
                          'Refunded', 'Error')),
    start_count       bigint NOT NULL DEFAULT 0,
    remains           bigint NOT NULL,
    upstream_id       text,
    cancel_requested  boolean NOT NULL DEFAULT false,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    checked_at        timestamptz
);
CREATE INDEX orders_user ON orders (user_id, id);
-- Fair status polling: least recently checked active orders of a provider first.
CREATE INDEX orders_to_sync ON orders (provider_id, checked_at NULLS FIRST)
    WHERE status IN ('Pending', 'In progress') AND upstream_id IS NOT NULL;
CREATE INDEX orders_active_link ON orders (user_id, service_id, link)
    WHERE status IN ('Pending', 'In progress');

CREATE TABLE refills (
    id           bigserial PRIMARY KEY,
    order_id     bigint NOT NULL REFERENCES orders,
    user_id      bigint NOT NULL REFERENCES users,
    status       text NOT NULL DEFAULT 'Pending' CHECK (status IN (
                     'Pending', 'In progress', 'Completed', 'Rejected', 'Error')),
    upstream_id  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    checked_at   timestamptz
);
CREATE INDEX refills_order ON refills (order_id, created_at);
CREATE INDEX refills_user ON refills (user_id, id);

-- Append-only. kind: credit/debit (operator), charge (an order), refund (of an order).
-- A charge and a refund exist at most once per order.
CREATE TABLE ledger_entries (
    id              bigserial PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES wallets,
    order_id        bigint REFERENCES orders,
    kind            text NOT NULL CHECK (kind IN ('credit', 'debit', 'charge', 'refund')),
    amount          bigint NOT NULL,
    balance_before  bigint NOT NULL,
    balance_after   bigint NOT NULL CHECK (balance_after >= 0),
    wallet_version  bigint NOT NULL,
    memo            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (balance_after = balance_before + amount),
    CHECK ((kind IN ('charge', 'refund')) = (order_id IS NOT NULL)),
    CHECK (CASE kind WHEN 'credit' THEN amount > 0 WHEN 'refund' THEN amount > 0
                     ELSE amount <= 0 END)
);
CREATE UNIQUE INDEX ledger_once_per_order ON ledger_entries (order_id, kind)
    WHERE order_id IS NOT NULL;
CREATE INDEX ledger_user ON ledger_entries (user_id, id);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only' USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- The stored outcome of a request that carried an idempotency key (24 h).
CREATE TABLE idempotency (
    user_id      bigint NOT NULL REFERENCES users,
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
    fingerprint  bytea NOT NULL,
    status       smallint NOT NULL,
    body         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_age ON idempotency (created_at);

-- Work for `panelsrv worker`, written in the transaction that creates it. A row is claimed by
-- setting lease_until (FOR UPDATE SKIP LOCKED); an expired lease may be taken over.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('dispatch', 'cancel', 'refill')),
    order_id     bigint REFERENCES orders,
    refill_id    bigint REFERENCES refills,
    run_after    timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    -- An attempt may have reached the provider without us learning the outcome (a timeout, a
    -- worker that died holding the lease): the order must not be treated as never sent.
    ambiguous    boolean NOT NULL DEFAULT false,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'refill') = (refill_id IS NOT NULL))
);
CREATE INDEX outbox_due ON outbox (run_after);
CREATE UNIQUE INDEX outbox_once ON outbox (kind, order_id) WHERE kind <> 'refill';

-- Webhooks: a user's endpoints, the events their orders and refills produce (written in the
-- transaction that changes the status), and one delivery per (endpoint, event).
CREATE TABLE webhooks (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users,
    url          text NOT NULL,
    secret       text NOT NULL,
    events       text[] NOT NULL CHECK (events <@ ARRAY['order.status', 'refill.status']
                                        AND cardinality(events) > 0),
    active       boolean NOT NULL DEFAULT true,
    failing_since timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);
CREATE INDEX webhooks_user ON webhooks (user_id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_events (
    id          bigserial PRIMARY KEY,
    public_id   text NOT NULL UNIQUE,
    user_id     bigint NOT NULL REFERENCES users,
    type        text NOT NULL CHECK (type IN ('order.status', 'refill.status')),
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id            bigserial PRIMARY KEY,
    webhook_id    bigint NOT NULL REFERENCES webhooks,
    event_id      bigint NOT NULL REFERENCES webhook_events,
    attempts      integer NOT NULL DEFAULT 0,
    run_after     timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    last_error    text,
    delivered_at  timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (run_after) WHERE delivered_at IS NULL;

-- Cache invalidation for every API process on every host (LISTEN/NOTIFY on the shared database).
CREATE FUNCTION notify_key_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL THEN
        PERFORM pg_notify('panelsrv_keys', encode(NEW.hash, 'hex'));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER api_keys_revoked AFTER UPDATE OF revoked_at ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_key_revoked();

CREATE FUNCTION notify_catalog() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('panelsrv_catalog', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER panels_changed AFTER INSERT OR UPDATE OR DELETE ON panels
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog();
CREATE TRIGGER services_changed AFTER INSERT OR UPDATE OR DELETE ON services
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog();
CREATE TRIGGER user_rates_changed AFTER INSERT OR UPDATE OR DELETE ON user_rates
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog();
CREATE TRIGGER users_changed AFTER UPDATE OF discount_bp, panel_id ON users
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog();
