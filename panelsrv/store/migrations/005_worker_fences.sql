-- 005_worker_fences: provider reports that cannot overflow or stall a batch, and a provider
-- `Error` refunded like a cancel.

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
