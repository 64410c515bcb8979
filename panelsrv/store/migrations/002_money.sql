-- 002_money: the order-placement statement. One call = one round trip = one transaction that
-- (1) takes the request's idempotency claim, (2) debits the wallet only if the balance covers the
-- charge AND the user is under the order-rate ceiling, (3) writes the charge ledger entry, the
-- order, the dispatch outbox row and the idempotency record - or nothing at all.
--
-- Concurrency: the wallet UPDATE is a compare-and-set; under READ COMMITTED a waiting writer
-- re-evaluates its WHERE (balance and the recent_orders window) against the committed row, so
-- neither the balance nor the ceiling can be overrun. The idempotency claim is an advisory
-- transaction lock: a concurrent duplicate answers 'busy' (409) at once instead of waiting, and a
-- crashed holder's claim vanishes with its transaction, so no stale claim can outlive it.
--
-- outcome: 'ok' | 'replay' (status/body of the first request) | 'busy' | 'mismatch' |
--          'funds' | 'limit' | 'duplicate_link'

CREATE FUNCTION place_order(
    p_user bigint, p_panel bigint, p_service bigint, p_provider bigint, p_charge bigint,
    p_link text, p_quantity bigint, p_runs integer, p_interval integer, p_extras jsonb,
    p_order_limit integer, p_idem_key text, p_fingerprint bytea, p_link_guard boolean,
    p_funds_body bytea)
RETURNS TABLE (outcome text, order_id bigint, balance bigint, status smallint, body bytea)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_before bigint;
    v_after bigint;
    v_version bigint;
    v_order bigint;
    v_body bytea;
    v_limited boolean;
    rec record;
BEGIN
    IF p_idem_key IS NOT NULL THEN
        IF NOT pg_try_advisory_xact_lock(
                hashtextextended('idem:' || p_user || ':' || p_idem_key, 0)) THEN
            RETURN QUERY SELECT 'busy'::text, NULL::bigint, NULL::bigint, NULL::smallint, NULL::bytea;
            RETURN;
        END IF;
        SELECT i.fingerprint, i.status, i.body INTO rec FROM idempotency i
         WHERE i.user_id = p_user AND i.key = p_idem_key
           AND i.created_at > now() - interval '24 hours';
        IF FOUND THEN
            IF rec.fingerprint <> p_fingerprint THEN
                RETURN QUERY SELECT 'mismatch'::text, NULL::bigint, NULL::bigint, NULL::smallint, NULL::bytea;
            ELSE
                RETURN QUERY SELECT 'replay'::text, NULL::bigint, NULL::bigint, rec.status, rec.body;
            END IF;
            RETURN;
        END IF;
    END IF;

    IF p_link_guard AND EXISTS (
            SELECT 1 FROM orders o
             WHERE o.user_id = p_user AND o.service_id = p_service AND o.link = p_link
               AND o.status IN ('Pending', 'In progress')) THEN
        RETURN QUERY SELECT 'duplicate_link'::text, NULL::bigint, NULL::bigint, NULL::smallint, NULL::bytea;
        RETURN;
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
        SELECT cardinality(ARRAY(SELECT t FROM unnest(w.recent_orders) t
                                  WHERE t > now() - interval '60 seconds')) >= p_order_limit
          INTO v_limited FROM wallets w WHERE w.user_id = p_user;
        IF v_limited THEN
            -- A rate-limit answer is not stored: the client may retry later with the same key.
            RETURN QUERY SELECT 'limit'::text, NULL::bigint, NULL::bigint, NULL::smallint, NULL::bytea;
            RETURN;
        END IF;
        IF p_idem_key IS NOT NULL THEN
            INSERT INTO idempotency (user_id, key, fingerprint, status, body)
            VALUES (p_user, p_idem_key, p_fingerprint, 402, p_funds_body)
            ON CONFLICT ON CONSTRAINT idempotency_pkey DO UPDATE
               SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status,
                   body = EXCLUDED.body, created_at = now();
        END IF;
        RETURN QUERY SELECT 'funds'::text, NULL::bigint, NULL::bigint, 402::smallint, p_funds_body;
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

    INSERT INTO outbox (kind, order_id) VALUES ('dispatch', v_order);

    v_body := convert_to('{"order":' || v_order || '}', 'UTF8');
    IF p_idem_key IS NOT NULL THEN
        -- An expired (> 24 h) record under the same key is replaced: the key is new again.
        INSERT INTO idempotency (user_id, key, fingerprint, status, body)
        VALUES (p_user, p_idem_key, p_fingerprint, 200, v_body)
        ON CONFLICT ON CONSTRAINT idempotency_pkey DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status,
               body = EXCLUDED.body, created_at = now();
    END IF;

    RETURN QUERY SELECT 'ok'::text, v_order, v_after, 200::smallint, v_body;
END $$;
