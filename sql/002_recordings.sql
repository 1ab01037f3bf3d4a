-- omnicc schema, part 2: recordings indexed with their call.
-- Each recording is announced by a call_recording event (agi/handlers/queue_call.py,
-- agi/handlers/inbound_route.py); the history writer stores it in call_event like any
-- other. This view lists them, and the index finds a call's recordings by its call id
-- (a queued call's "{uniqueid}-{queue}", or a route's Asterisk uniqueid).

CREATE INDEX call_event_recording_call ON call_event (tenant, (fields->>'call'))
    WHERE event = 'call_recording';

CREATE VIEW call_recording AS
SELECT tenant,
       at,
       fields->>'call'      AS call,
       uniqueid,
       fields->>'queue'     AS queue,
       fields->>'route'     AS route,
       fields->>'agent'     AS agent,
       fields->>'mode'      AS mode,
       fields->>'recording' AS recording
  FROM call_event
 WHERE event = 'call_recording';
