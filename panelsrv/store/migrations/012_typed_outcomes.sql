-- 012_typed_outcomes: the money statements answer with typed outcomes (ids and codes) instead
-- of JSON they built themselves. panelsrv.api renders every body from its reply types
-- (api/actions.py) with one encoder; panelsrv/store/outcomes.py holds the one table from each
-- code below to its error, as asyncpg keeps one table from SQLSTATE to exception. Until now
-- 002's place_order wrote '{"order":N}' and order_action the cancel and refill bodies, with
-- their own copies of the error texts: a second and third owner of the wire format.
--
-- Codes (the whole call): busy, mismatch (the idempotency claim), funds, limit, duplicate_link;
-- (one order of a cancel or refill): not_found, cancel_unavailable, refill_unavailable.
-- Not refusals: 'ok', and 'stored' (a replay of a body stored before this migration).
--
-- Idempotency records keep the outcome, not the bytes: for each order the request named (an
-- add: the order it placed) its id, the refill it created and the code of its refusal (NULL:
-- done), in the same transaction as the money move, so no order exists without its record. A
-- replay is rendered from them by the code that rendered the first answer, so it is
-- byte-identical to it. Rendered bytes passed in from Python were the alternative; an add's
-- body names the order id, which only the INSERT here learns. Rows stored before 012 hold
-- their rendered `body` and no outcome; they are replayed exactly as stored (the API's
-- 'stored' outcome) until they expire, 24 h after the upgrade.
--
-- place_order, order_action, refill_one, idem_claim and idem_store change their parameters or
-- results, so they are dropped and created again (CREATE OR REPLACE cannot change either);
-- cancel_one (as 005 left it) keeps its signature and is replaced. The new functions run in
-- the transaction of the migration, so no call sees a mix of old and new.

ALTER TABLE idempotency
    ALTER COLUMN body DROP NOT NULL,
    ADD COLUMN order_ids bigint[],
    ADD COLUMN refill_ids bigint[],
    ADD COLUMN codes text[],
    ADD CONSTRAINT idempotency_answer CHECK ((body IS NULL) <> (codes IS NULL));

-- Claim (p_user, p_key): 'new' (go on), 'busy', 'mismatch', or 'replay' with the stored answer
-- (its outcome columns, or the `body` of a record stored before 012).
DROP FUNCTION idem_claim(bigint, text, bytea);
CREATE FUNCTION idem_claim(p_user bigint, p_key text, p_fingerprint bytea,
                           OUT outcome text, OUT status smallint, OUT body bytea,
                           OUT order_ids bigint[], OUT refill_ids bigint[], OUT codes text[])
LANGUAGE plpgsql AS $$
DECLARE
    rec record;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('idem:' || p_user || ':' || p_key, 0)) THEN
        outcome := 'busy';
        RETURN;
    END IF;
    SELECT i.fingerprint, i.status, i.body, i.order_ids, i.refill_ids, i.codes INTO rec
      FROM idempotency i
     WHERE i.user_id = p_user AND i.key = p_key AND i.created_at > now() - interval '24 hours';
    IF NOT FOUND THEN
        outcome := 'new';
    ELSIF rec.fingerprint <> p_fingerprint THEN
        outcome := 'mismatch';
    ELSE
        outcome := 'replay';
        status := rec.status; body := rec.body;
        order_ids := rec.order_ids; refill_ids := rec.refill_ids; codes := rec.codes;
    END IF;
END $$;

-- Record the outcome under a claimed key (an expired record under the same key is replaced).
DROP FUNCTION idem_store(bigint, text, bytea, smallint, bytea);
CREATE FUNCTION idem_store(p_user bigint, p_key text, p_fingerprint bytea, p_status smallint,
                           p_order_ids bigint[], p_refill_ids bigint[], p_codes text[])
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO idempotency (user_id, key, fingerprint, status, order_ids, refill_ids, codes)
    VALUES (p_user, p_key, p_fingerprint, p_status, p_order_ids, p_refill_ids, p_codes)
    ON CONFLICT ON CONSTRAINT idempotency_pkey DO UPDATE
       SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status, body = NULL,
           order_ids = EXCLUDED.order_ids, refill_ids = EXCLUDED.refill_ids,
           codes = EXCLUDED.codes, created_at = now();
$$;

-- What a stored add answers: 'stored' for a body from before 012, else its outcome ('ok' for
-- the order it placed, or the code of its refusal). place_order's replays and the API's lookup
-- of a stored answer (store/ledger.py STORED_ANSWER) both read a record through this.
CREATE FUNCTION idem_add_outcome(p_body bytea, p_codes text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_body IS NOT NULL THEN 'stored' ELSE coalesce(p_codes[1], 'ok') END;
$$;

-- outcome: 'ok' (order_id and balance set; a replay: order_id only) | 'stored' (status, body)
-- | 'busy' | 'mismatch' | 'funds' | 'limit' (retry_after) | 'duplicate_link'
DROP FUNCTION place_order(bigint, bigint, bigint, bigint, bigint, text, bigint, integer, integer,
                          jsonb, integer, text, bytea, boolean, bytea);
CREATE FUNCTION place_order(
    p_user bigint, p_panel bigint, p_service bigint, p_provider bigint, p_charge bigint,
    p_link text, p_quantity bigint, p_runs integer, p_interval integer, p_extras jsonb,
    p_order_limit integer, p_idem_key text, p_fingerprint bytea, p_link_guard boolean)
RETURNS TABLE (outcome text, order_id bigint, balance bigint, status smallint, body bytea,
               retry_after integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_before bigint;
    v_after bigint;
    v_version bigint;
    v_order bigint;
    v_limited boolean;
    v_retry integer;
    claim record;
BEGIN
    IF p_idem_key IS NOT NULL THEN
        SELECT * INTO claim FROM idem_claim(p_user, p_idem_key, p_fingerprint);
        IF claim.outcome = 'replay' THEN
            RETURN QUERY SELECT idem_add_outcome(claim.body, claim.codes), claim.order_ids[1],
                                NULL::bigint, claim.status, claim.body, NULL::integer;
            RETURN;
        ELSIF claim.outcome <> 'new' THEN
            RETURN QUERY SELECT claim.outcome, NULL::bigint, NULL::bigint, NULL::smallint,
                                NULL::bytea, NULL::integer;
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
            PERFORM idem_store(p_user, p_idem_key, p_fingerprint, 402::smallint, NULL::bigint[],
                               NULL::bigint[], ARRAY['funds']);
        END IF;
        RETURN QUERY SELECT 'funds'::text, NULL::bigint, NULL::bigint, NULL::smallint,
                            NULL::bytea, NULL::integer;
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

    IF p_idem_key IS NOT NULL THEN
        PERFORM idem_store(p_user, p_idem_key, p_fingerprint, 200::smallint, ARRAY[v_order],
                           NULL::bigint[], ARRAY[NULL]::text[]);
    END IF;
    RETURN QUERY SELECT 'ok'::text, v_order, v_after, NULL::smallint, NULL::bytea,
                        NULL::integer;
END $$;

-- Cancel one order of p_user (locked by the caller), as 005 left it. NULL when done, else the
-- code of the refusal: not yours / not found 'not_found'; service without cancel, or the order
-- has started, 'cancel_unavailable'. Certainly never accepted upstream: canceled now with a
-- full refund (cancel_unsent). Otherwise (sent, or maybe sent): a cancel request for the
-- worker to forward upstream; the order becomes Canceled when the provider confirms.
CREATE OR REPLACE FUNCTION cancel_one(p_user bigint, p_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    job record;
BEGIN
    SELECT ord.id, ord.status, ord.upstream_id, ord.cancel_requested, s.cancel
      INTO o
      FROM orders ord JOIN services s ON s.id = ord.service_id
     WHERE ord.id = p_id AND ord.user_id = p_user;
    IF NOT FOUND THEN
        RETURN 'not_found';
    ELSIF NOT o.cancel OR o.status <> 'Pending' THEN
        RETURN 'cancel_unavailable';
    ELSIF o.cancel_requested THEN
        RETURN NULL;
    END IF;
    SELECT x.id, x.lease_until, x.ambiguous INTO job FROM outbox x
     WHERE x.kind = 'dispatch' AND x.order_id = p_id FOR UPDATE;
    -- Certainly never accepted upstream: no provider (no job), or a job that no worker holds
    -- and whose attempts all ended in a definite refusal.
    IF o.upstream_id IS NULL AND (NOT FOUND OR (job.lease_until IS NULL AND NOT job.ambiguous)) THEN
        PERFORM cancel_unsent(p_id, 'canceled before dispatch');
    ELSE
        -- An attempt holds the job: if it ends without reaching the provider, outbox_retry
        -- cancels the order then; otherwise the cancel is forwarded upstream.
        UPDATE orders SET cancel_requested = true, updated_at = now() WHERE id = p_id;
        INSERT INTO outbox (kind, order_id) VALUES ('cancel', p_id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

-- Refill one order of p_user (locked by the caller): only Completed/Partial orders of services
-- with refill, no refill in flight, none in the last p_cooldown_hours, fewer than p_max per
-- order. (refill id, NULL) when created, else (NULL, the code of the refusal: 'not_found',
-- 'refill_unavailable').
DROP FUNCTION refill_one(bigint, bigint, integer, integer);
CREATE FUNCTION refill_one(p_user bigint, p_id bigint, p_max integer, p_cooldown_hours integer,
                           OUT refill bigint, OUT code text)
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    r record;
BEGIN
    SELECT ord.status, s.refill AS allowed INTO o
      FROM orders ord JOIN services s ON s.id = ord.service_id
     WHERE ord.id = p_id AND ord.user_id = p_user;
    IF NOT FOUND THEN
        code := 'not_found';
        RETURN;
    END IF;
    SELECT count(*) AS total,
           count(*) FILTER (WHERE f.status IN ('Pending', 'In progress')) AS open,
           max(f.created_at) AS last
      INTO r FROM refills f WHERE f.order_id = p_id;
    IF NOT o.allowed OR o.status NOT IN ('Completed', 'Partial') OR r.open > 0
       OR r.total >= p_max OR r.last > now() - make_interval(hours => p_cooldown_hours) THEN
        code := 'refill_unavailable';
        RETURN;
    END IF;
    INSERT INTO refills (order_id, user_id) VALUES (p_id, p_user) RETURNING id INTO refill;
    INSERT INTO outbox (kind, order_id, refill_id) VALUES ('refill', p_id, refill);
END $$;

-- `cancel` or `refill` (p_action) of p_user's orders, in the given order, under an optional
-- idempotency key. outcome 'ok': for each order of p_ids, in order, its refill (refill only)
-- and the code of its refusal (NULL: done); 'stored' (status, body): a replay of a record from
-- before 012; 'busy'; 'mismatch'. The API renders the answer from these (api/respond.py).
DROP FUNCTION order_action(text, bigint, bigint[], boolean, integer, integer, text, bytea);
CREATE FUNCTION order_action(p_action text, p_user bigint, p_ids bigint[], p_single boolean,
                             p_max integer, p_cooldown_hours integer,
                             p_idem_key text, p_fingerprint bytea,
                             OUT outcome text, OUT status smallint, OUT body bytea,
                             OUT order_ids bigint[], OUT refill_ids bigint[], OUT codes text[])
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
    v_code text;
    v_refill bigint;
    claim record;
    r record;
BEGIN
    IF p_idem_key IS NOT NULL THEN
        SELECT * INTO claim FROM idem_claim(p_user, p_idem_key, p_fingerprint);
        IF claim.outcome = 'replay' THEN
            outcome := CASE WHEN claim.body IS NULL THEN 'ok' ELSE 'stored' END;
            status := claim.status; body := claim.body;
            order_ids := claim.order_ids; refill_ids := claim.refill_ids; codes := claim.codes;
            RETURN;
        ELSIF claim.outcome <> 'new' THEN
            outcome := claim.outcome;
            RETURN;
        END IF;
    END IF;
    -- Lock every order up front in ascending id order (the order every writer uses), so two
    -- concurrent calls with the same ids in different orders cannot deadlock.
    PERFORM 1 FROM orders WHERE id = ANY(p_ids) AND user_id = p_user ORDER BY id FOR UPDATE;
    order_ids := p_ids; refill_ids := '{}'; codes := '{}';
    FOREACH v_id IN ARRAY p_ids LOOP
        IF p_action = 'cancel' THEN
            v_code := cancel_one(p_user, v_id);
            v_refill := NULL;
        ELSE
            SELECT * INTO r FROM refill_one(p_user, v_id, p_max, p_cooldown_hours);
            v_code := r.code;
            v_refill := r.refill;
        END IF;
        refill_ids := refill_ids || v_refill;
        codes := codes || v_code;
    END LOOP;
    outcome := 'ok';
    -- A refused single order (400) changed nothing and is not stored, as API.md says of every
    -- 400: the client may fix the request, or wait until the order qualifies, and retry.
    IF p_idem_key IS NOT NULL AND NOT (p_single AND codes[1] IS NOT NULL) THEN
        PERFORM idem_store(p_user, p_idem_key, p_fingerprint, 200::smallint, order_ids,
                           refill_ids, codes);
    END IF;
END $$;
