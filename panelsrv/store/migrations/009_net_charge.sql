-- 009_net_charge: webhook payloads show the charge resellers reconcile with, what the order
-- cost in the end: its charge less its refund (a Partial's share, or all of it for Canceled,
-- Refunded and Error: 0.00). orders.charge stays the original debit, which `panelsrv audit`
-- proves every refund against; the refund is the order's one 'refund' entry, found by one
-- lookup in ledger_once_per_order. The same expression is `status`'s (store/orders.py).
-- Every caller of order_event writes the refund before it, in the same transaction.

CREATE OR REPLACE FUNCTION order_event(p_order bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    v_event bigint;
BEGIN
    SELECT ord.id, ord.user_id, ord.status, ord.start_count, ord.remains, p.currency,
           ord.charge - coalesce((SELECT r.amount FROM ledger_entries r
                                   WHERE r.order_id = ord.id AND r.kind = 'refund'), 0) AS charge
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
