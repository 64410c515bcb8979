-- 002_money: the statements that move money or claim an idempotency key. Each API action is
-- ONE call = one round trip = one transaction, which either does everything or nothing.
--
-- Concurrency: wallet UPDATEs are compare-and-set; under READ COMMITTED a waiting writer
-- re-evaluates its WHERE (balance, recent_orders window) against the committed row, so neither
-- the balance nor the order ceiling can be overrun. Orders are locked (FOR UPDATE) before their
-- state changes, and several orders are processed in the caller's order; the dispatcher locks
-- the same rows, so a cancel and a dispatch never both win.
--
-- Idempotency claims are transaction-scoped advisory locks: a concurrent duplicate answers
-- 'busy' (409) at once instead of waiting, and a crashed holder's claim vanishes with its
-- transaction, so no stale claim outlives it. Records live 24 h.

-- Claim (p_user, p_key): 'new' (go on), 'busy', 'mismatch', or 'replay' with the stored answer.
-- Replaced by 012_typed_outcomes.sql: the record's outcome (ids, codes) besides the
-- body of records from before 012 (dropped and created again).
CREATE FUNCTION idem_claim(p_user bigint, p_key text, p_fingerprint bytea,
                           OUT outcome text, OUT status smallint, OUT body bytea)
LANGUAGE plpgsql AS $$
DECLARE
    rec record;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('idem:' || p_user || ':' || p_key, 0)) THEN
        outcome := 'busy';
        RETURN;
    END IF;
    SELECT i.fingerprint, i.status, i.body INTO rec FROM idempotency i
     WHERE i.user_id = p_user AND i.key = p_key AND i.created_at > now() - interval '24 hours';
    IF NOT FOUND THEN
        outcome := 'new';
    ELSIF rec.fingerprint <> p_fingerprint THEN
        outcome := 'mismatch';
    ELSE
        outcome := 'replay';
        status := rec.status;
        body := rec.body;
    END IF;
END $$;

-- Record the answer under a claimed key (an expired record under the same key is replaced).
-- Replaced by 012_typed_outcomes.sql: stores the outcome, not a body (dropped and
-- created again).
CREATE FUNCTION idem_store(p_user bigint, p_key text, p_fingerprint bytea, p_status smallint,
                           p_body bytea) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO idempotency (user_id, key, fingerprint, status, body)
    VALUES (p_user, p_key, p_fingerprint, p_status, p_body)
    ON CONFLICT ON CONSTRAINT idempotency_pkey DO UPDATE
       SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status, body = EXCLUDED.body,
           created_at = now();
$$;

-- Credit an order's refund exactly once (unique (order_id, kind) raises on a second one).
-- No row when the amount is not within (0, charge] or the order does not exist.
-- Replaced by 009_net_charge.sql: it also keeps orders.refunded (the net charge).
CREATE FUNCTION refund_order(p_order bigint, p_amount bigint, p_memo text,
                             OUT entry_id bigint, OUT balance_after bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_user bigint;
    v_before bigint;
    v_version bigint;
BEGIN
    SELECT o.user_id INTO v_user FROM orders o
     WHERE o.id = p_order AND p_amount > 0 AND p_amount <= o.charge;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE wallets w SET balance = w.balance + p_amount, version = w.version + 1
     WHERE w.user_id = v_user
    RETURNING w.balance - p_amount, w.balance, w.version INTO v_before, balance_after, v_version;
    INSERT INTO ledger_entries (user_id, order_id, kind, amount, balance_before, balance_after,
                                wallet_version, memo)
    VALUES (v_user, p_order, 'refund', p_amount, v_before, balance_after, v_version, p_memo)
    RETURNING id INTO entry_id;
END $$;

-- Minor units (1e-5) as the API's decimal text: at least 2 decimals, at most 5 (money.format).
-- Replaced by 004_money_text.sql: integer arithmetic, exact above 1e9 (this numeric
-- division lost the last decimals).
CREATE FUNCTION money_text(p_units bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(t) - position('.' IN t) < 2 THEN t || repeat('0', 2 - (length(t) - position('.' IN t))) ELSE t END
      FROM (SELECT rtrim(to_char(p_units / 100000.0, 'FM999999999999990.00000'), '0') AS t) x;
$$;

-- Random bytes without the pgcrypto extension (uuid generation is built into PostgreSQL 13+).
CREATE FUNCTION gen_random_bytes_compat(p_len integer) RETURNS bytea
LANGUAGE sql VOLATILE AS $$
    SELECT substring(decode(replace(gen_random_uuid()::text, '-', '') ||
                            replace(gen_random_uuid()::text, '-', ''), 'hex') FROM 1 FOR p_len);
$$;

-- Record an order's current status as a webhook event, in the caller's transaction, for each
-- active endpoint of its owner that wants order.status (nothing when there is none).
-- Replaced by 009_net_charge.sql: the payload's charge is net of refunds.
CREATE FUNCTION order_event(p_order bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    v_event bigint;
BEGIN
    SELECT ord.id, ord.user_id, ord.status, ord.charge, ord.start_count, ord.remains, p.currency
      INTO o FROM orders ord JOIN panels p ON p.id = ord.panel_id WHERE ord.id = p_order;
    IF NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.user_id = o.user_id AND w.active
                      AND w.deleted_at IS NULL AND 'order.status' = ANY(w.events)) THEN
        RETURN;
    END IF;
    INSERT INTO webhook_events (public_id, user_id, type, data)
    VALUES ('evt_' || encode(gen_random_bytes_compat(12), 'hex'), o.user_id, 'order.status',
            jsonb_build_object('order', o.id, 'status', o.status,
                               'charge', money_text(o.charge),
                               'start_count', o.start_count::text,
                               'remains', o.remains::text, 'currency', o.currency))
    RETURNING id INTO v_event;
    INSERT INTO webhook_deliveries (webhook_id, event_id)
    SELECT w.id, v_event FROM webhooks w
     WHERE w.user_id = o.user_id AND w.active AND w.deleted_at IS NULL
       AND 'order.status' = ANY(w.events);
END $$;

CREATE FUNCTION refill_event(p_refill bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_event bigint;
BEGIN
    SELECT f.id, f.order_id, f.user_id, f.status INTO r FROM refills f WHERE f.id = p_refill;
    IF NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.user_id = r.user_id AND w.active
                      AND w.deleted_at IS NULL AND 'refill.status' = ANY(w.events)) THEN
        RETURN;
    END IF;
    INSERT INTO webhook_events (public_id, user_id, type, data)
    VALUES ('evt_' || encode(gen_random_bytes_compat(12), 'hex'), r.user_id, 'refill.status',
            jsonb_build_object('refill', r.id, 'order', r.order_id, 'status', r.status))
    RETURNING id INTO v_event;
    INSERT INTO webhook_deliveries (webhook_id, event_id)
    SELECT w.id, v_event FROM webhooks w
     WHERE w.user_id = r.user_id AND w.active AND w.deleted_at IS NULL
       AND 'refill.status' = ANY(w.events);
END $$;

-- outcome: 'ok' | 'replay' | 'busy' | 'mismatch' | 'funds' | 'limit' | 'duplicate_link'
-- Replaced by 012_typed_outcomes.sql: answers with codes and the order id, and stores
-- the outcome; no body, no p_funds_body (dropped and created again).
CREATE FUNCTION place_order(
    p_user bigint, p_panel bigint, p_service bigint, p_provider bigint, p_charge bigint,
    p_link text, p_quantity bigint, p_runs integer, p_interval integer, p_extras jsonb,
    p_order_limit integer, p_idem_key text, p_fingerprint bytea, p_link_guard boolean,
    p_funds_body bytea)
RETURNS TABLE (outcome text, order_id bigint, balance bigint, status smallint, body bytea,
               retry_after integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_before bigint;
    v_after bigint;
    v_version bigint;
    v_order bigint;
    v_body bytea;
    v_limited boolean;
    v_retry integer;
    claim record;
BEGIN
    IF p_idem_key IS NOT NULL THEN
        SELECT * INTO claim FROM idem_claim(p_user, p_idem_key, p_fingerprint);
        IF claim.outcome <> 'new' THEN
            RETURN QUERY SELECT claim.outcome, NULL::bigint, NULL::bigint, claim.status, claim.body,
                                NULL::integer;
            RETURN;
        END IF;
    END IF;

    IF p_link_guard THEN
        -- Take the wallet row lock (the debit below takes it anyway) before looking: a
        -- concurrent add of the same user then waits here until it commits, and this check,
        -- on a fresh snapshot, sees its order. Checked first, two adds could both find none.
        PERFORM 1 FROM wallets w WHERE w.user_id = p_user FOR UPDATE;
        IF EXISTS (
                SELECT 1 FROM orders o
                 WHERE o.user_id = p_user AND o.service_id = p_service AND o.link = p_link
                   AND o.status IN ('Pending', 'In progress')) THEN
            RETURN QUERY SELECT 'duplicate_link'::text, NULL::bigint, NULL::bigint,
                                NULL::smallint, NULL::bytea, NULL::integer;
            RETURN;
        END IF;
    END IF;

    UPDATE wallets w
       SET balance = w.balance - p_charge,
           version = w.version + 1,
           recent_orders = ARRAY(SELECT t FROM unnest(w.recent_orders) t
                                  WHERE t > now() - interval '60 seconds') || now()
     WHERE w.user_id = p_user
       AND w.balance >= p_charge
       AND cardinality(ARRAY(SELECT t FROM unnest(w.recent_orders) t
                              WHERE t > now() - interval '60 seconds')) < p_order_limit
    RETURNING w.balance + p_charge, w.balance, w.version INTO v_before, v_after, v_version;

    IF NOT FOUND THEN
        -- Over the ceiling? Then also say when the oldest order in the window leaves it.
        SELECT count(*) >= p_order_limit,
               ceil(extract(epoch FROM min(t) + interval '60 seconds' - now()))::integer
          INTO v_limited, v_retry
          FROM wallets w, unnest(w.recent_orders) t
         WHERE w.user_id = p_user AND t > now() - interval '60 seconds';
        IF v_limited OR p_order_limit <= 0 THEN
            -- A rate-limit answer is not stored: the client may retry later with the same key.
            RETURN QUERY SELECT 'limit'::text, NULL::bigint, NULL::bigint, NULL::smallint,
                                NULL::bytea, greatest(coalesce(v_retry, 60), 1);
            RETURN;
        END IF;
        IF p_idem_key IS NOT NULL THEN
            PERFORM idem_store(p_user, p_idem_key, p_fingerprint, 402::smallint, p_funds_body);
        END IF;
        RETURN QUERY SELECT 'funds'::text, NULL::bigint, NULL::bigint, 402::smallint, p_funds_body,
                            NULL::integer;
        RETURN;
    END IF;

    INSERT INTO orders (user_id, panel_id, service_id, provider_id, link, quantity, runs,
                        run_interval, extras, charge, remains)
    VALUES (p_user, p_panel, p_service, p_provider, p_link, p_quantity, p_runs, p_interval,
            p_extras, p_charge, p_quantity * p_runs)
    RETURNING id INTO v_order;

    INSERT INTO ledger_entries (user_id, order_id, kind, amount, balance_before, balance_after,
                                wallet_version)
    VALUES (p_user, v_order, 'charge', -p_charge, v_before, v_after, v_version);

    IF p_provider IS NOT NULL THEN
        INSERT INTO outbox (kind, order_id) VALUES ('dispatch', v_order);
    END IF;

    v_body := convert_to('{"order":' || v_order || '}', 'UTF8');
    IF p_idem_key IS NOT NULL THEN
        PERFORM idem_store(p_user, p_idem_key, p_fingerprint, 200::smallint, v_body);
    END IF;
    RETURN QUERY SELECT 'ok'::text, v_order, v_after, 200::smallint, v_body, NULL::integer;
END $$;

-- Cancel one order of p_user (locked by the caller). NULL when done, else the refusal:
-- not yours / not found "Incorrect order ID"; service without cancel, or the order has started
-- "Cancel is not available". Certainly never accepted upstream: canceled now with a full
-- refund. Otherwise (sent, or maybe sent): a cancel request for the worker to forward upstream;
-- the order becomes Canceled when the provider confirms.
-- Replaced by 005_worker_fences.sql: its cancel-before-dispatch branch fenced by the attempt
-- (cancel_unsent).
-- Replaced by 012_typed_outcomes.sql: the refusal as a code ('not_found',
-- 'cancel_unavailable'), not as the client's text.
CREATE FUNCTION cancel_one(p_user bigint, p_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    job record;
BEGIN
    SELECT ord.id, ord.status, ord.upstream_id, ord.cancel_requested, ord.charge, s.cancel
      INTO o
      FROM orders ord JOIN services s ON s.id = ord.service_id
     WHERE ord.id = p_id AND ord.user_id = p_user;
    IF NOT FOUND THEN
        RETURN 'Incorrect order ID';
    ELSIF NOT o.cancel OR o.status <> 'Pending' THEN
        RETURN 'Cancel is not available';
    ELSIF o.cancel_requested THEN
        RETURN NULL;
    END IF;
    SELECT x.id, x.lease_until, x.ambiguous INTO job FROM outbox x
     WHERE x.kind = 'dispatch' AND x.order_id = p_id FOR UPDATE;
    -- Certainly never accepted upstream: no provider (no job), or a job that no worker holds
    -- and whose attempts all ended in a definite refusal.
    IF o.upstream_id IS NULL AND (NOT FOUND OR (job.lease_until IS NULL AND NOT job.ambiguous)) THEN
        DELETE FROM outbox WHERE kind = 'dispatch' AND order_id = p_id;
        UPDATE orders SET status = 'Canceled', remains = quantity * runs, updated_at = now()
         WHERE id = p_id;
        IF o.charge > 0 THEN
            PERFORM refund_order(p_id, o.charge, 'canceled before dispatch');
        END IF;
        PERFORM order_event(p_id);
    ELSE
        UPDATE orders SET cancel_requested = true, updated_at = now() WHERE id = p_id;
        INSERT INTO outbox (kind, order_id) VALUES ('cancel', p_id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

-- Refill one order of p_user (locked by the caller): only Completed/Partial orders of services
-- with refill, no refill in flight, none in the last p_cooldown_hours, fewer than p_max per
-- order. (refill id, NULL) when created, else (NULL, the refusal).
-- Replaced by 012_typed_outcomes.sql: the refusal as a code ('not_found',
-- 'refill_unavailable') in OUT code (dropped and created again).
CREATE FUNCTION refill_one(p_user bigint, p_id bigint, p_max integer, p_cooldown_hours integer,
                           OUT refill bigint, OUT error text)
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    r record;
BEGIN
    SELECT ord.status, s.refill AS allowed INTO o
      FROM orders ord JOIN services s ON s.id = ord.service_id
     WHERE ord.id = p_id AND ord.user_id = p_user;
    IF NOT FOUND THEN
        error := 'Incorrect order ID';
        RETURN;
    END IF;
    SELECT count(*) AS total,
           count(*) FILTER (WHERE f.status IN ('Pending', 'In progress')) AS open,
           max(f.created_at) AS last
      INTO r FROM refills f WHERE f.order_id = p_id;
    IF NOT o.allowed OR o.status NOT IN ('Completed', 'Partial') OR r.open > 0
       OR r.total >= p_max OR r.last > now() - make_interval(hours => p_cooldown_hours) THEN
        error := 'Refill is not available';
        RETURN;
    END IF;
    INSERT INTO refills (order_id, user_id) VALUES (p_id, p_user) RETURNING id INTO refill;
    INSERT INTO outbox (kind, order_id, refill_id) VALUES ('refill', p_id, refill);
END $$;

-- `cancel` or `refill` (p_action) of p_user's orders, in the given order, under an optional
-- idempotency key. The answer is built here, byte-compatible with the API's JSON, so an
-- idempotent replay is exact: p_single -> {"<action>":value} or {"error":...} (status 400);
-- else [{"order":N,"<action>":value or {"error":...}}, ...].
-- Replaced by 012_typed_outcomes.sql: answers with ids and codes, which the API
-- renders, instead of this JSON (dropped and created again).
CREATE FUNCTION order_action(p_action text, p_user bigint, p_ids bigint[], p_single boolean,
                             p_max integer, p_cooldown_hours integer,
                             p_idem_key text, p_fingerprint bytea,
                             OUT outcome text, OUT status smallint, OUT body bytea)
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
    v_value text;
    v_error text;
    v_items text[] := '{}';
    claim record;
    r record;
BEGIN
    IF p_idem_key IS NOT NULL THEN
        SELECT * INTO claim FROM idem_claim(p_user, p_idem_key, p_fingerprint);
        IF claim.outcome <> 'new' THEN
            outcome := claim.outcome; status := claim.status; body := claim.body;
            RETURN;
        END IF;
    END IF;
    -- Lock every order up front in ascending id order (the order every writer uses), so two
    -- concurrent calls with the same ids in different orders cannot deadlock.
    PERFORM 1 FROM orders WHERE id = ANY(p_ids) AND user_id = p_user ORDER BY id FOR UPDATE;
    FOREACH v_id IN ARRAY p_ids LOOP
        IF p_action = 'cancel' THEN
            v_error := cancel_one(p_user, v_id);
            v_value := '1';
        ELSE
            SELECT * INTO r FROM refill_one(p_user, v_id, p_max, p_cooldown_hours);
            v_error := r.error;
            v_value := r.refill::text;
        END IF;
        IF p_single THEN
            IF v_error IS NULL THEN
                status := 200;
                body := convert_to('{"' || p_action || '":' || v_value || '}', 'UTF8');
            ELSE
                status := 400; body := convert_to('{"error":"' || v_error || '"}', 'UTF8');
            END IF;
        ELSE
            v_items := v_items || ('{"order":' || v_id || ',"' || p_action || '":'
                || CASE WHEN v_error IS NULL THEN v_value
                        ELSE '{"error":"' || v_error || '"}' END || '}');
        END IF;
    END LOOP;
    IF NOT p_single THEN
        status := 200;
        body := convert_to('[' || array_to_string(v_items, ',') || ']', 'UTF8');
    END IF;
    outcome := 'ok';
    -- A refused single order (400) changed nothing and is not stored, as API.md says of every
    -- 400: the client may fix the request, or wait until the order qualifies, and retry.
    IF p_idem_key IS NOT NULL AND status = 200 THEN
        PERFORM idem_store(p_user, p_idem_key, p_fingerprint, status, body);
    END IF;
END $$;
