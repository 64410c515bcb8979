-- 010_tiers: named rate-limit tiers per panel, one per user at most. A tier sets the per-user
-- soft cap (requests per second and burst) of its users in place of the server's `user_rate`
-- and `user_burst`, and may lower their order-placement ceiling (never above 30 per minute,
-- panelconf.ORDER_CEILING; the lower of the tier's and the panel's applies). users.tier_id
-- NULL: the server's per-user cap and the panel's ceiling, as before.
--
-- The key cache reads a user's tier with their key (keycache.LOOKUP_PRINCIPAL), so applying it
-- costs no lookup; a change to a tier or to a user's tier notifies `panelsrv_catalog` like a
-- price change, and every process drops its cached principals.

CREATE TABLE tiers (
    id          bigserial PRIMARY KEY,
    panel_id    bigint NOT NULL REFERENCES panels,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$'),
    rate        double precision NOT NULL CHECK (rate > 0 AND rate <= 1000000),
    burst       integer NOT NULL CHECK (burst BETWEEN 1 AND 1000000),
    orders      integer NOT NULL DEFAULT 30 CHECK (orders BETWEEN 0 AND 30),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (panel_id, name),
    UNIQUE (panel_id, id)  -- the target of users_tier: a user's tier is on the user's panel
);

ALTER TABLE users ADD COLUMN tier_id bigint;
ALTER TABLE users ADD CONSTRAINT users_tier
    FOREIGN KEY (panel_id, tier_id) REFERENCES tiers (panel_id, id);
CREATE INDEX users_tier ON users (tier_id) WHERE tier_id IS NOT NULL;

CREATE TRIGGER tiers_changed AFTER INSERT OR UPDATE OR DELETE ON tiers
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog();
DROP TRIGGER users_changed ON users;
CREATE TRIGGER users_changed AFTER UPDATE OF discount_bp, panel_id, tier_id ON users
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalog();
