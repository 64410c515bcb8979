-- 003_worker: what `panelsrv worker` applies after an order is placed. Every provider answer is
-- applied through these functions, each in one transaction with the order row locked, so that
-- a provider repeating itself, or two workers applying the same answer, change nothing twice.

-- Forward-only status ranks: Pending < In progress < every final status.
CREATE FUNCTION order_rank(p_status text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_status WHEN 'Pending' THEN 0 WHEN 'In progress' THEN 1 ELSE 2 END;
$$;

CREATE FUNCTION refill_rank(p_status text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_status WHEN 'Pending' THEN 0 WHEN 'In progress' THEN 1 ELSE 2 END;
$$;

-- Apply a provider's report for one order: status moves forward only; counters follow while
-- the order is active; Partial refunds charge * min(remains, total) / total (rounded down),
-- Canceled and Refunded refund the whole charge - once (the ledger's unique (order, kind)).
-- Returns 'changed', 'progress' (counters only) or 'ignored'.
-- Replaced by 005_worker_fences.sql: the Partial refund in numeric, a Partial without remains
-- ignored, Error refunded like Canceled.
CREATE FUNCTION apply_order_status(p_order bigint, p_status text, p_start_count bigint,
                                   p_remains bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    v_total bigint;
    v_refund bigint := 0;
BEGIN
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
        v_refund := o.charge * least(greatest(coalesce(p_remains, 0), 0), v_total) / v_total;
    ELSIF p_status IN ('Canceled', 'Refunded') THEN
        v_refund := o.charge;
    END IF;
    UPDATE orders
       SET status = p_status,
           start_count = coalesce(p_start_count, start_count),
           remains = CASE WHEN p_status = 'Completed' THEN 0
                          WHEN p_status IN ('Canceled', 'Refunded') THEN v_total
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

-- The provider refused the order for good: Canceled, the whole charge refunded, job gone.
CREATE FUNCTION fail_order(p_order bigint, p_error text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_result text;
BEGIN
    UPDATE orders SET error = left(p_error, 500) WHERE id = p_order;
    DELETE FROM outbox WHERE order_id = p_order AND kind IN ('dispatch', 'cancel');
    v_result := apply_order_status(p_order, 'Canceled', NULL, NULL);
    RETURN v_result;
END $$;

CREATE FUNCTION apply_refill_status(p_refill bigint, p_status text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_old text;
BEGIN
    SELECT status INTO v_old FROM refills WHERE id = p_refill FOR UPDATE;
    IF NOT FOUND OR v_old = p_status OR refill_rank(v_old) = 2
       OR refill_rank(p_status) < refill_rank(v_old) THEN
        RETURN 'ignored';
    END IF;
    UPDATE refills SET status = p_status, updated_at = now() WHERE id = p_refill;
    PERFORM refill_event(p_refill);
    RETURN 'changed';
END $$;
