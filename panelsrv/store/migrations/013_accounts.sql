-- 013_accounts: what the reseller pages (panelsrv/web) sign in with, and what they show of keys.
--
-- Passwords: argon2id hashes only (store/accounts.py states the parameters); NULL until the
-- reseller sets one through an invitation. Invitations, sessions and recovery codes are stored
-- as SHA-256 of their random tokens, never the tokens. A session belongs to one user and so to
-- that user's panel: the pages accept it only on that panel's Host. `stage` 'password' is a
-- session that passed the password but still owes its second factor; only 'full' opens pages.
-- Failed sign-ins are counted on the user row (`login_failures` within the current window,
-- `login_locked_until`): exact across processes and hosts, like the wallet's order ceiling.
--
-- Keys gain a label, the client addresses allowed to use them (empty: any; read with the key by
-- keycache.LOOKUP_PRINCIPAL, so enforcing it costs no lookup) and when they were last used
-- (written in batches by each API process, never per request).

ALTER TABLE users
    ADD COLUMN password_hash       text,
    ADD COLUMN password_changed_at timestamptz,
    ADD COLUMN totp_secret         text,
    ADD COLUMN totp_enabled_at     timestamptz,
    ADD COLUMN totp_last_step      bigint NOT NULL DEFAULT 0,
    ADD COLUMN login_failures      integer NOT NULL DEFAULT 0 CHECK (login_failures >= 0),
    ADD COLUMN login_window_start  timestamptz,
    ADD COLUMN login_locked_until  timestamptz;

CREATE TABLE account_invites (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users,
    hash        bytea NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX account_invites_user ON account_invites (user_id) WHERE used_at IS NULL;

CREATE TABLE sessions (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users,
    hash          bytea NOT NULL UNIQUE CHECK (length(hash) = 32),
    csrf          text NOT NULL,
    stage         text NOT NULL CHECK (stage IN ('password', 'full')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id) WHERE ended_at IS NULL;

CREATE TABLE recovery_codes (
    user_id  bigint NOT NULL REFERENCES users,
    hash     bytea NOT NULL CHECK (length(hash) = 32),
    used_at  timestamptz,
    PRIMARY KEY (user_id, hash)
);

ALTER TABLE api_keys
    ADD COLUMN label         text NOT NULL DEFAULT '' CHECK (length(label) <= 64),
    ADD COLUMN allowed_ips   cidr[] NOT NULL DEFAULT '{}'
                             CHECK (cardinality(allowed_ips) <= 20),
    ADD COLUMN last_used_at  timestamptz;
