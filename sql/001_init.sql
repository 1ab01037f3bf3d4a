-- omnicc schema, part 1: tenants and the event history.
-- PostgreSQL is the system of record for configuration and history; nothing on the call
-- path reads it. Events reach it from the Redis stream.

CREATE TABLE tenant (
    name        text PRIMARY KEY,
    sip_domain  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every event of the Redis stream, keyed by its stream id so a re-read writes nothing twice.
CREATE TABLE call_event (
    tenant      text NOT NULL,
    stream_id   text NOT NULL,
    event       text NOT NULL,
    node        text NOT NULL,
    at          timestamptz NOT NULL,
    uniqueid    text,
    fields      jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant, stream_id)
);
CREATE INDEX call_event_at ON call_event (tenant, at);
CREATE INDEX call_event_uniqueid ON call_event (tenant, uniqueid);
