-- Accounts. The email is stored normalized (see API.md "Email"), so a plain unique index on it
-- is what makes registration race-safe: two inserts of one address cannot both commit.
CREATE TABLE users (
    id              uuid        PRIMARY KEY,
    email           text        NOT NULL,
    hashed_password text        NOT NULL,
    is_active       boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_normalized CHECK (email = lower(email) AND char_length(email) BETWEEN 3 AND 254),
    CONSTRAINT users_hashed_password_phc CHECK (hashed_password LIKE '$argon2%')
);
