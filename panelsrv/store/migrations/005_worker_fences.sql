-- 005_worker_fences: provider reports that cannot overflow or stall a batch, a provider `Error`
-- refunded like a cancel, dispatch outcomes fenced by their attempt (a cancel during an attempt
-- that never reached the provider refunds at once), and an installation-unique Idempotency-Key
-- per outbox job.
--
-- Lock order, as in 002: an order's row before its outbox rows (cancel_one runs under the order
-- lock and then locks the dispatch job), so a worker finishing an attempt and a customer's
-- cancel wait for each other instead of deadlocking.

-- The key sent upstream with this job's order or refill. Random, so it never repeats across
-- installations sharing a provider account nor after a database restore reuses order ids;
-- stored, so every resend of an attempt with an unknown outcome carries the same one. Jobs
-- queued before this migration keep the key their earlier attempts were sent with.
ALTER TABLE outbox ADD COLUMN upstream_key text NOT NULL
    DEFAULT 'panelsrv-' || replace(gen_random_uuid()::text, '-', '');
UPDATE outbox SET upstream_key = CASE kind WHEN 'dispatch' THEN 'panelsrv-order-' || order_id
                                           ELSE 'panelsrv-refill-' || refill_id END
 WHERE kind IN ('dispatch', 'refill');

-- Apply a provider's report for one order (as in 003, with three changes): the Partial refund
-- charge * min(remains, total) / total is computed in numeric (the product exceeds bigint for a
-- large order in a small-unit currency; the quotient never exceeds the charge); a Partial
-- without remains changes nothing (its refund is unknown: the order is polled again); and
-- Error refunds the whole charge like Canceled and Refunded (API.md: other provider errors
-- fail the order with a full refund), once.
CREATE OR REPLACE FUNCTION apply_order_status(p_order bigint, p_status text, p_start_count bigint,
                                              p_remains bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    v_total bigint;
    v_refund bigint := 0;
BEGIN
    IF p_status = 'Partial' AND p_remains IS NULL THEN
        RETURN 'ignored';
    END IF;
    SELECT ord.status, ord.charge, ord.quantity * ord.runs AS total, ord.start_count, ord.remains
      INTO o FROM orders ord WHERE ord.id = p_order FOR UPDATE;
    IF NOT FOUND OR order_rank(o.status) = 2 OR order_rank(p_status) < order_rank(o.status) THEN
        RETURN 'ignored';
    END IF;
    v_total := o.total;
    IF p_status = o.status THEN
        IF o.start_count IS DISTINCT FROM p_start_count OR o.remains IS DISTINCT FROM p_remains THEN
            UPDATE orders SET start_count = coalesce(p_start_count, start_count),
                              remains = coalesce(p_remains, remains), updated_at = now()
             WHERE id = p_order;
            RETURN 'progress';
        END IF;
        RETURN 'ignored';
    END IF;
    IF p_status = 'Partial' THEN
        v_refund := div(o.charge::numeric * least(greatest(p_remains, 0), v_total), v_total);
    ELSIF p_status IN ('Canceled', 'Refunded', 'Error') THEN
        v_refund := o.charge;
    END IF;
    UPDATE orders
       SET status = p_status,
           start_count = coalesce(p_start_count, start_count),
           remains = CASE WHEN p_status = 'Completed' THEN 0
                          WHEN p_status IN ('Canceled', 'Refunded', 'Error') THEN v_total
                          ELSE coalesce(p_remains, remains) END,
           updated_at = now()
     WHERE id = p_order;
    IF v_refund > 0 AND NOT EXISTS (SELECT 1 FROM ledger_entries
                                     WHERE order_id = p_order AND kind = 'refund') THEN
        PERFORM refund_order(p_order, v_refund, 'provider reported ' || p_status);
    END IF;
    IF order_rank(p_status) = 2 THEN
        DELETE FROM outbox WHERE order_id = p_order AND kind = 'cancel';
    END IF;
    PERFORM order_event(p_order);
    RETURN 'changed';
END $$;

-- Cancel a Pending order that certainly never reached its provider: Canceled, the whole charge
-- refunded (once: a Pending order has no refund yet), its dispatch and cancel jobs gone, the
-- event written. The caller holds the order's lock. False when the order is not Pending, or has
-- an upstream id (some attempt placed it: whatever the caller believed, it is not unsent).
CREATE FUNCTION cancel_unsent(p_order bigint, p_memo text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_charge bigint;
BEGIN
    UPDATE orders SET status = 'Canceled', remains = quantity * runs, updated_at = now()
     WHERE id = p_order AND status = 'Pending' AND upstream_id IS NULL
    RETURNING charge INTO v_charge;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM outbox WHERE order_id = p_order AND kind IN ('dispatch', 'cancel');
    IF v_charge > 0 THEN
        PERFORM refund_order(p_order, v_charge, p_memo);
    END IF;
    PERFORM order_event(p_order);
    RETURN true;
END $$;

-- cancel_one as in 002, its cancel-before-dispatch branch now cancel_unsent.
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
        PERFORM cancel_unsent(p_id, 'canceled before dispatch');
    ELSE
        -- An attempt holds the job: if it ends without reaching the provider, outbox_retry
        -- cancels the order then; otherwise the cancel is forwarded upstream.
        UPDATE orders SET cancel_requested = true, updated_at = now() WHERE id = p_id;
        INSERT INTO outbox (kind, order_id) VALUES ('cancel', p_id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

-- Lock a job's order, then the job itself if attempt p_attempt still holds it (the fence: a
-- later claim has raised `attempts`). All NULL when the attempt is stale or the job gone.
CREATE FUNCTION lock_attempt(p_job bigint, p_attempt integer,
                             OUT kind text, OUT order_id bigint, OUT ambiguous boolean,
                             OUT cancel_requested boolean, OUT upstream_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    SELECT ord.id, ord.cancel_requested, ord.upstream_id INTO order_id, cancel_requested, upstream_id
      FROM orders ord WHERE ord.id = (SELECT x.order_id FROM outbox x WHERE x.id = p_job)
       FOR UPDATE;
    SELECT x.kind, x.ambiguous INTO kind, ambiguous FROM outbox x
     WHERE x.id = p_job AND x.attempts = p_attempt FOR UPDATE;
    IF NOT FOUND THEN
        order_id := NULL; cancel_requested := NULL; upstream_id := NULL;
    END IF;
END $$;

-- Attempt p_attempt of job p_job ended without an outcome: reschedule it in p_seconds
-- ('retry'), marked ambiguous when it may have reached the provider. A dispatch attempt that
-- certainly did not reach it, of an order whose customer asked to cancel meanwhile, with no
-- earlier attempt that may have (the condition cancel_one uses), cancels and refunds the order
-- instead ('canceled'). A stale attempt changes nothing ('stale').
CREATE FUNCTION outbox_retry(p_job bigint, p_attempt integer, p_seconds double precision,
                             p_error text, p_maybe_sent boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j record;
BEGIN
    SELECT * INTO j FROM lock_attempt(p_job, p_attempt);
    IF j.kind IS NULL THEN
        RETURN 'stale';
    END IF;
    IF j.kind = 'dispatch' AND NOT p_maybe_sent AND NOT j.ambiguous AND j.cancel_requested
       AND j.upstream_id IS NULL THEN
        IF cancel_unsent(j.order_id, 'canceled before dispatch') THEN
            RETURN 'canceled';
        END IF;
    END IF;
    UPDATE outbox SET lease_until = NULL, run_after = now() + make_interval(secs => p_seconds),
                      last_error = left(p_error, 500), ambiguous = ambiguous OR p_maybe_sent
     WHERE id = p_job;
    RETURN 'retry';
END $$;

-- The provider refused attempt p_attempt of dispatch job p_job for good: when that attempt
-- still holds the job and no attempt has placed the order upstream, the order is Canceled with
-- a full refund and the refusal kept in orders.error ('failed'). A stale attempt changes nothing
-- ('stale'); an order another attempt has placed upstream keeps going, the job done ('sent').
CREATE FUNCTION fail_dispatch(p_job bigint, p_attempt integer, p_error text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j record;
BEGIN
    SELECT * INTO j FROM lock_attempt(p_job, p_attempt);
    IF j.kind IS NULL THEN
        RETURN 'stale';
    ELSIF j.upstream_id IS NOT NULL THEN
        DELETE FROM outbox WHERE id = p_job;
        RETURN 'sent';
    END IF;
    UPDATE orders SET error = left(p_error, 500) WHERE id = j.order_id;
    PERFORM cancel_unsent(j.order_id, 'refused by the provider');
    DELETE FROM outbox WHERE id = p_job;
    RETURN 'failed';
END $$;

-- Unfenced, it refunded orders a later attempt had placed upstream: fail_dispatch replaces it.
DROP FUNCTION fail_order(bigint, text);
