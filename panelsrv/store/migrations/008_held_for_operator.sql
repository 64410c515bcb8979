-- 008_held_for_operator: an attempt whose outcome is unknown (a lost answer, a worker killed
-- after its request went out) is resent on its own only to a provider that honours
-- Idempotency-Key, where the resend returns the same upstream order. Any other provider could
-- buy the order twice: the job is held for the operator instead (run_after 'infinity',
-- held_at set), who checks upstream and then resends it, records the upstream id it has there,
-- or fails it with a full refund (`panelsrv order resend` / `order attach` / `order fail`).
--
-- The window is also narrower: an attempt marks its job `sending` right before its request
-- goes out (in the statement that renews its lease), so a worker that dies before that point
-- leaves a job that is not ambiguous, only late. (The flag only counts on a lease that expired:
-- every claim clears it, and an attempt that ends sets lease_until NULL.)

ALTER TABLE providers ADD COLUMN honours_idempotency boolean NOT NULL DEFAULT false;
ALTER TABLE outbox ADD COLUMN sending boolean NOT NULL DEFAULT false;
ALTER TABLE outbox ADD COLUMN held_at timestamptz;
CREATE INDEX outbox_held ON outbox (held_at) WHERE held_at IS NOT NULL;

-- The operator's answer to a held job of order p_order, after checking upstream:
-- 'resend' (it is not at the provider: send it again, as a first attempt), 'attach' (it is
-- there as p_upstream: record that id, as a successful send would, and let the status sync take
-- over) or 'fail' (give up: a dispatch job's order is Canceled with its whole charge refunded,
-- once; a refill job's refill Rejected). Returns what was done ('resent', 'attached',
-- 'failed'; 'placed' when an earlier attempt's late answer recorded the upstream id meanwhile,
-- 'final' when the order is no longer Pending), or NULL when the order has no held job.
CREATE FUNCTION resolve_held(p_order bigint, p_action text, p_upstream text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j record;
    v_upstream text;
BEGIN
    IF p_action NOT IN ('resend', 'attach', 'fail') THEN
        RAISE EXCEPTION 'unknown action %', p_action USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The order before its job, always.
    SELECT upstream_id INTO v_upstream FROM orders WHERE id = p_order FOR UPDATE;
    SELECT x.id, x.kind, x.refill_id INTO j FROM outbox x
     WHERE x.order_id = p_order AND x.held_at IS NOT NULL ORDER BY x.id LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF j.kind = 'dispatch' AND v_upstream IS NOT NULL THEN
        -- A late answer of an earlier attempt placed it after all (SENT records any attempt's
        -- id): nothing to resend, nothing to refund; the status sync follows it.
        DELETE FROM outbox WHERE id = j.id;
        RETURN 'placed';
    END IF;
    IF p_action = 'resend' THEN
        UPDATE outbox SET run_after = now(), held_at = NULL, ambiguous = false,
                          last_error = 'resent by the operator'
         WHERE id = j.id;
        RETURN 'resent';
    ELSIF p_action = 'attach' THEN
        IF j.kind = 'dispatch' THEN
            UPDATE orders SET upstream_id = p_upstream, updated_at = now() WHERE id = p_order;
        ELSE
            UPDATE refills SET upstream_id = p_upstream, updated_at = now() WHERE id = j.refill_id;
        END IF;
        DELETE FROM outbox WHERE id = j.id;
        RETURN 'attached';
    END IF;
    IF j.kind = 'dispatch' THEN
        IF NOT cancel_unsent(p_order, 'failed by the operator') THEN
            RETURN 'final';  -- no longer Pending: nothing to cancel or refund (job kept held)
        END IF;
        UPDATE orders SET error = 'failed by the operator after an unknown outcome'
         WHERE id = p_order;
    ELSE
        PERFORM apply_refill_status(j.refill_id, 'Rejected');
    END IF;
    DELETE FROM outbox WHERE id = j.id;
    RETURN 'failed';
END $$;
