-- 009_net_charge: `status` and webhook payloads show the charge resellers reconcile with, what
-- the order cost in the end: its charge less its refund (a Partial's share, or all of it for
-- Canceled, Refunded and Error: 0.00). orders.charge stays the original debit, which `panelsrv
-- audit` proves every refund against; orders.refunded is the order's refund, written by
-- refund_order in the statement that credits it (audit checks the two agree), so answering
-- `status` costs no extra lookup.

ALTER TABLE orders ADD COLUMN refunded bigint NOT NULL DEFAULT 0;
UPDATE orders o SET refunded = e.amount
  FROM ledger_entries e WHERE e.order_id = o.id AND e.kind = 'refund';
ALTER TABLE orders ADD CONSTRAINT orders_refunded CHECK (refunded BETWEEN 0 AND charge);

-- refund_order as in 002, the order's refunded recorded first: the order row is locked before
-- the wallet, the order every status change takes (apply_order_status, cancel_unsent).
CREATE OR REPLACE FUNCTION refund_order(p_order bigint, p_amount bigint, p_memo text,
                                        OUT entry_id bigint, OUT balance_after bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_user bigint;
    v_before bigint;
    v_version bigint;
BEGIN
    UPDATE orders o SET refunded = o.refunded + p_amount
     WHERE o.id = p_order AND p_amount > 0 AND p_amount <= o.charge - o.refunded
    RETURNING o.user_id INTO v_user;
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

CREATE OR REPLACE FUNCTION order_event(p_order bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    v_event bigint;
BEGIN
    SELECT ord.id, ord.user_id, ord.status, ord.start_count, ord.remains, p.currency,
           ord.charge - ord.refunded AS charge
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
