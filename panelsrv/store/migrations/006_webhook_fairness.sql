-- 006_webhook_fairness: webhook deliveries claimed per endpoint and per user, not globally by
-- due time, and a circuit breaker per endpoint. Before, a worker claimed the 100 deliveries due
-- first whoever they were for and awaited them all, so one user's tarpit endpoints (and their
-- retries) filled every slot and delayed every other user's events for as long as they stalled.

-- The breaker, on the endpoint's row so every worker sees it: `failures` consecutive failed
-- (or too slow) attempts; open while open_until is in the future, half-open (one delivery in
-- flight at a time, a probe) once it has passed, closed (NULL) after a success.
ALTER TABLE webhooks
    ADD COLUMN failures   integer NOT NULL DEFAULT 0,
    ADD COLUMN open_until timestamptz;

-- An endpoint's next due deliveries, and the deliveries in flight (leased) per endpoint.
CREATE INDEX webhook_deliveries_next ON webhook_deliveries (webhook_id, run_after, id)
    WHERE delivered_at IS NULL;
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (webhook_id)
    WHERE delivered_at IS NULL AND lease_until IS NOT NULL;
-- Nothing reads deliveries by due time across endpoints any more.
DROP INDEX webhook_deliveries_due;

-- A disabled or deleted endpoint's pending deliveries are dropped with it (claims skip such
-- endpoints). Rows locked right now - a delivery being claimed or recorded - are skipped
-- rather than waited for (no lock cycle with those); recording an attempt drops them then.
CREATE FUNCTION webhook_dropped() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE webhook_deliveries SET run_after = 'infinity', lease_until = NULL
     WHERE id IN (SELECT id FROM webhook_deliveries
                   WHERE webhook_id = NEW.id AND delivered_at IS NULL
                     FOR UPDATE SKIP LOCKED);
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_dropped AFTER UPDATE OF active ON webhooks
    FOR EACH ROW WHEN (OLD.active AND NOT NEW.active) EXECUTE FUNCTION webhook_dropped();
UPDATE webhook_deliveries d SET run_after = 'infinity', lease_until = NULL
  FROM webhooks w
 WHERE w.id = d.webhook_id AND NOT w.active AND d.delivered_at IS NULL;

-- Lease up to p_want due deliveries for one worker. Only endpoints that are active and whose
-- breaker is not open; at most p_per_endpoint in flight per endpoint (one while half-open) and
-- p_per_user per user, counting every worker's leases; users served in turn by what they hold
-- (a user's k-th delivery in flight, counting those already leased, comes before anyone's
-- k+1-th: one whose endpoints stall and hold many slots goes last), each endpoint's oldest due
-- first. Claims are
-- serialised by an advisory lock and each statement of this (volatile) function reads a fresh
-- snapshot, so every claim sees the leases of the one before it: the caps are exact.
CREATE FUNCTION claim_webhook_deliveries(p_want integer, p_lease double precision,
                                         p_per_endpoint integer, p_per_user integer)
RETURNS TABLE (delivery bigint, attempt integer, webhook bigint, url text, secret text,
               event text, type text, created bigint, data jsonb)
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('panelsrv.webhook_claim', 0));
    WITH flight AS (
        SELECT d.webhook_id, count(*)::integer AS n FROM webhook_deliveries d
         WHERE d.delivered_at IS NULL AND d.lease_until > now()
         GROUP BY d.webhook_id
    ), endpoint AS (
        SELECT w.id, w.user_id,
               CASE WHEN w.open_until IS NULL THEN p_per_endpoint ELSE 1 END
               - coalesce(f.n, 0) AS room,
               p_per_user - sum(coalesce(f.n, 0)) OVER (PARTITION BY w.user_id) AS user_room,
               w.active AND (w.open_until IS NULL OR w.open_until <= now()) AS ready
          FROM webhooks w LEFT JOIN flight f ON f.webhook_id = w.id
         WHERE w.active OR f.n IS NOT NULL
    ), candidate AS (
        SELECT d.id, d.run_after, e.user_room, p_per_user - e.user_room AS user_busy,
               row_number() OVER (PARTITION BY e.user_id ORDER BY d.run_after, d.id) AS nth
          FROM endpoint e
         CROSS JOIN LATERAL (
               SELECT d.id, d.run_after FROM webhook_deliveries d
                WHERE d.webhook_id = e.id AND d.delivered_at IS NULL AND d.run_after <= now()
                  AND (d.lease_until IS NULL OR d.lease_until <= now())
                ORDER BY d.run_after, d.id
                LIMIT greatest(e.room, 0)
         ) d
         WHERE e.ready AND e.room > 0 AND e.user_room > 0
    ), pick AS (
        SELECT c.id FROM candidate c WHERE c.nth <= c.user_room
         ORDER BY c.user_busy + c.nth, c.run_after, c.id
         LIMIT p_want
    )
    UPDATE webhook_deliveries d
       SET lease_until = now() + make_interval(secs => p_lease), attempts = d.attempts + 1
      FROM pick, webhooks w, webhook_events ev
     WHERE d.id = pick.id AND w.id = d.webhook_id AND ev.id = d.event_id
    RETURNING d.id, d.attempts, w.id, w.url, w.secret, ev.public_id, ev.type,
              extract(epoch FROM ev.created_at)::bigint, ev.data;
$$;

-- Record one attempt. p_delivered: the receiver answered 2xx (never sent again); otherwise the
-- next attempt in p_retry seconds, or never once the event is p_give_up_hours old or the
-- endpoint is gone. p_ok: the endpoint behaved (a fast 2xx); anything else - a failure, or a
-- 2xx slower than the sender's bound - counts against it: p_threshold in a row open its
-- breaker for p_cooldown seconds (a verdict arriving while it is open does not extend it),
-- and an endpoint not behaving for p_give_up_hours is disabled. Locks the endpoint, then the
-- delivery (the order the trigger above takes them in). Returns the endpoint's change:
-- 'opened', 'closed', 'disabled' or NULL.
CREATE FUNCTION finish_webhook_delivery(p_delivery bigint, p_attempt integer,
                                        p_delivered boolean, p_ok boolean,
                                        p_error text, p_retry double precision,
                                        p_threshold integer, p_cooldown double precision,
                                        p_give_up_hours integer)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    w record;
    v_give_up timestamptz := now() - make_interval(hours => p_give_up_hours);
BEGIN
    SELECT wh.id, wh.active, wh.failures, wh.failing_since, wh.open_until INTO w
      FROM webhooks wh JOIN webhook_deliveries d ON d.webhook_id = wh.id
     WHERE d.id = p_delivery
       FOR UPDATE OF wh;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE webhook_deliveries dl
       SET lease_until = NULL, last_error = left(p_error, 500),
           delivered_at = CASE WHEN p_delivered THEN now() END,
           run_after = CASE WHEN p_delivered THEN dl.run_after
                            WHEN NOT w.active OR e.created_at < v_give_up THEN 'infinity'
                            ELSE now() + make_interval(secs => p_retry) END
      FROM webhook_events e
     -- Fenced: only the attempt that holds the delivery settles it (a stale one, whose lease
     -- ran out and whose delivery was claimed again, must not undo or reschedule that one);
     -- what it saw of the endpoint still counts below.
     WHERE dl.id = p_delivery AND dl.attempts = p_attempt AND e.id = dl.event_id;
    IF p_ok THEN
        UPDATE webhooks SET failures = 0, failing_since = NULL, open_until = NULL
         WHERE id = w.id;
        RETURN CASE WHEN w.open_until IS NOT NULL THEN 'closed' END;
    END IF;
    IF w.active AND w.failing_since < v_give_up THEN
        UPDATE webhooks SET active = false, failures = w.failures + 1 WHERE id = w.id;
        RETURN 'disabled';
    END IF;
    UPDATE webhooks
       SET failures = w.failures + 1, failing_since = coalesce(w.failing_since, now()),
           open_until = CASE WHEN w.open_until > now() THEN w.open_until  -- open: not extended
                             WHEN w.failures + 1 >= p_threshold
                             THEN now() + make_interval(secs => p_cooldown) END
     WHERE id = w.id;
    RETURN CASE WHEN w.failures + 1 >= p_threshold AND NOT coalesce(w.open_until > now(), false)
                THEN 'opened' END;
END $$;
