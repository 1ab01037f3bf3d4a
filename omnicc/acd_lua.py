"""The ACD's atomic transitions: one Lua script per operation, run inside Redis.

Each script is one atomic step: it changes agents, calls and queues of one tenant, appends
every change to the tenant's event stream (``XADD ... MAXLEN ~``), and returns what it did.
Nothing else writes ACD state, so two nodes can never interleave halfway through a
transition: a call arriving while its agent goes into wrap-up, pause or logout is decided
entirely before or entirely after that change.

Calling convention (every script):

    KEYS[1]   the tenant's event stream. It carries the tenant's hash tag {t:<tenant>}, so
              Redis Cluster runs the script on the tenant's slot; every other key a script
              touches is built inside it from the tenant name and shares that tag (the
              agents and queues a step touches are only known inside it). The Lua key
              helpers are generated from omnicc/keys.py, and so are the transition tables
              from omnicc/agent_state.py.
    ARGV[1]   tenant, ARGV[2] the node running the script (the event's `node`),
    ARGV[3]   now in ms for deterministic tests, '' in production: the scripts then read
              Redis TIME, never a client's clock. ARGV[4...]: the operation's own.

Every script returns ``{code, state, offers, extra}``: code ``ok`` or a refusal
(omnicc.agent_state.Refusal), the agent's or call's state afterwards, the reservations this
step made (``{call, agent, queue, node, lease_until}`` each) and op-specific pairs.

The model (keys in omnicc/keys.py):

- Matching happens from both sides inside the scripts. ``enqueue`` reserves a READY member
  at once, chosen by the queue's strategy; an agent becoming READY (login, unpause, wrap-up
  over, a released reservation) takes the best WAITING call across all its queues: higher
  priority first, then longest wait. Hence a queue never holds a WAITING call and a READY
  registered member at the same time after any script.
- READY members sit in a per-queue sorted set scored when they become READY:
  ``penalty * 1e13 + base`` (lower first, so a lower penalty always wins), base by strategy:
  longest-idle: when the agent's last call ended (its login time before any call);
  fewest-calls: calls answered from this queue (ties by extension); linear: join order;
  round-robin-memory: join order, offered from the member after the last one reserved;
  random: 0, a random rank among the best penalty is drawn per call; ringall: every READY
  member of the best penalty (at most 32) is reserved and the first answer wins;
  skills-weighted: ``(MAX_SKILL - skill) * SKILL_STEP`` plus the second the agent's last
  call ended, so the highest skill in this queue wins, then the longest idle (a tie within
  that second goes to the earlier ms). A member's skill is kept per queue (default 50).
- A reservation is a lease (``reservation_lease_ms``: ring timeout plus margin). The agent
  holds it until answer, no-answer, release, or its end; an expired lease puts the agent
  back to READY and the call back to its old place (or FAILED_OVER when the call's own
  lease ran out too, see below). ``answer`` succeeds only while the reservation holds, so
  of two concurrent answers exactly one wins; answer and no_answer may name the offer's
  lease_until, a fencing token, so a late report cannot act on a newer reservation of the
  same agent for the same call.
- A call that comes back (no answer, lease over, its agent paused or left) keeps its place
  (its score is its priority and first arrival) and is offered to the other READY members
  first; the agent that let it go becomes READY after that, and may get it again when no
  one else is free — the dialplan decides how long to wait before ringing again (as
  app_queue's retry), or the queue's auto_pause_reason pauses agents who do not answer.
- An agent in several queues keeps the wrap-up of the call it took: hangup uses the
  agent's own wrapup_ms, else the call's queue's.
- A WAITING call carries its own lease (``call_lease_ms``), renewed by the node whose AGI
  session holds the caller. If that node dies, another node may ``adopt`` the call (the
  dialplan re-runs the queue on another FastAGI server): it keeps its place. If nobody
  renews it, the call is FAILED_OVER with reason ``call_lease_expired``: no live session
  holds its caller any more, and the dialplan of a caller still connected has taken the
  failover path when its AGI failed.
- A CONNECTED call has a lease too (the queue's ``call_lease_ms``), renewed by its node as
  a whole: ``renew_connected_calls`` run by that node's FastAGI server (agi/acd_tick.py)
  starts again the leases of every call in ``{t:T}:node:<node>:connected``. When the node
  dies, its calls' leases run out and each call ends (``call_ended`` reason
  ``lease_expired``; its agent goes into wrap-up, then READY), instead of keeping its agent
  ONCALL for ever. The lease vouches for the node, not for each call: a call Asterisk lost
  while its FastAGI server lives is not noticed (docs/acd.md).
- Time-driven changes are lazy and exact: every script first settles what is due
  (expired call leases — waiting, then connected —, expired reservations, wrap-ups over),
  in that order, at most 100 of each; the events carry the time each change took effect
  (lease end, wrap-up end), not when it was noticed. ``tick`` only settles, for when
  nothing else runs.
- Each reservation PUBLISHes ``<call> <agent,agent...> <queue> <lease_until>`` on
  ``{t:T}:node:<call's node>:offers``: one pattern subscription per FastAGI server wakes
  the session waiting for that call (omnicc.acd.AcdStore.wait_for_offer), which reads the
  call's state after subscribing, so a reservation made before it listened is not missed.
  (Pub/sub rather than a list per call that each session BLPOPs: one connection per
  server instead of one per waiting caller. On Redis Cluster, SPUBLISH keeps it in the
  tenant's shard.)

Events (fields beside event, ts, tenant, node; empty ones are left out). ``ts`` is seconds
with ms, from Redis TIME: when the change took effect. ``node`` is the node that ran the
step, ``call_node`` the node holding the caller.

    agent_login, agent_logout (reason requested|forced|unregistered), agent_paused
      (reason, from_state), agent_unpaused, agent_wrapup_done: agent, agent_state
    call_enqueued: call, queue, caller, did, call_node, priority
    call_reserved: + agent, lease_until, agent_state
    call_answered: + agent, wait_ms, outcome=answered, agent_state
    call_released: call, queue, agent, reason (no_answer|rejected|busy|reservation_expired|
      agent_paused|agent_logout|unregistered|caller_abandoned|call_failed_over|
      answered_elsewhere), agent_state
    call_requeued: call, queue, call_node
    call_ended: + agent, talk_ms, reason (who hung up, agent_forced_logout, lease_expired),
      outcome=answered, agent_state, wrapup_until
    call_abandoned, call_failed_over: call, queue, caller, did, call_node, reason, wait_ms,
      outcome (abandoned|failed_over)
    call_overflowed: call, queue, caller, did, call_node, reason (queue_full|no_agents),
      outcome=overflowed
    call_adopted: call, queue, call_node, from_node
    queue_configured, queue_member_added, queue_member_removed: queue, agent, ...

Counters per queue (``{t:T}:queue:Q:stats``): calls_offered, calls_answered,
calls_answered_within_service_level, calls_abandoned, calls_abandoned_within_service_level,
calls_failed_over, calls_overflowed, calls_ended, rings_unanswered, wait_ms_answered_total,
wait_ms_abandoned_total, talk_ms_total; and ``{t:T}:queue:Q:agent_states``: how many members
are in each state.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from omnicc import keys
from omnicc.agent_state import (
    AgentEvent,
    AgentState,
    CallEvent,
    CallState,
    next_call_state,
    next_state,
)
from omnicc.events import STREAM_MAXLEN

# Penalty and priority steps in a score: ms timestamps stay below it, and penalty 500 or
# priority 99 times it stays below 2**53, where doubles stop being exact integers.
SCORE_TIER = 10**13
MAX_PENALTY = 500
# Skill levels of queue members (skills-weighted strategy): higher is offered first.
MAX_SKILL = 100
DEFAULT_SKILL = 50
# skills-weighted scores: one step per skill point below MAX_SKILL, then the idle time in
# whole seconds (below 10**10 until the year 2286); (MAX_SKILL + 1) steps stay below
# SCORE_TIER, so the penalty still comes first.
SKILL_STEP = 10**10
MAX_PRIORITY = 99
SETTLE_BATCH = 100
RINGALL_MAX = 32
# A finished call's hash stays this long, so a late report gets `call_over`, not `unknown_call`.
CALL_RETENTION_SECONDS = 3600

# (Lua name, key function of omnicc.keys, its parameters after the tenant)
_KEY_FUNCTIONS: list[tuple[str, Callable[..., str], tuple[str, ...]]] = [
    ("k_agent", keys.agent_hash, ("ext",)),
    ("k_agent_queues", keys.agent_queues, ("ext",)),
    ("k_contact", keys.agent_contact, ("ext",)),
    ("k_queue", keys.queue_settings, ("q",)),
    ("k_members", keys.queue_members, ("q",)),
    ("k_positions", keys.queue_positions, ("q",)),
    ("k_skills", keys.queue_skills, ("q",)),
    ("k_ready", keys.queue_ready, ("q",)),
    ("k_waiting", keys.queue_waiting, ("q",)),
    ("k_stats", keys.queue_stats, ("q",)),
    ("k_agent_states", keys.queue_agent_states, ("q",)),
    ("k_calls_taken", keys.queue_calls_taken, ("q",)),
    ("k_call", keys.acd_call, ("id",)),
    ("k_ringing", keys.call_ringing, ("id",)),
    ("k_offers", keys.node_offers, ("node",)),
    ("k_node_connected", keys.node_connected, ("node",)),
    ("K_AGENTS", keys.tenant_agents, ()),
    ("K_QUEUES", keys.tenant_queues, ()),
    ("K_RESERVATION_LEASES", keys.reservation_leases, ()),
    ("K_WRAPUP_ENDS", keys.wrapup_ends, ()),
    ("K_CALL_LEASES", keys.call_leases, ()),
    ("K_CONNECTED_LEASES", keys.connected_leases, ()),
]

_MARK = re.compile(r"\x00(\w+)\x00")


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _lua_key(name: str, key_function: Callable[..., str], params: tuple[str, ...]) -> str:
    """A Lua function (or constant) building the same key name as `key_function`: it is
    called with marked placeholders and the marks become Lua variables."""
    template = key_function("\x00TENANT\x00", *(f"\x00{p}\x00" for p in params))
    parts = _MARK.split(template)
    pieces = [part if i % 2 else _lua_string(part) for i, part in enumerate(parts) if part]
    expression = " .. ".join(pieces)
    if params:
        return f"local function {name}({', '.join(params)}) return {expression} end"
    return f"local {name} = {expression}"


def _lua_agent_steps() -> str:
    rows = []
    for state in AgentState:
        for event in AgentEvent:
            for registered in (True, False):
                for auto_pause in (False, True):
                    step = next_state(state, event, registered=registered, auto_pause=auto_pause)
                    key = f"{state}|{event}|{int(registered)}|{int(auto_pause)}"
                    rows.append(f"  ['{key}'] = {{'{step.state}', '{step.refusal or ''}'}},")
    return "local AGENT_STEP = {\n" + "\n".join(rows) + "\n}"


def _lua_call_steps() -> str:
    rows = []
    for state in CallState:
        for event in CallEvent:
            step = next_call_state(state, event)
            rows.append(f"  ['{state}|{event}'] = {{'{step.state}', '{step.refusal or ''}'}},")
    return "local CALL_STEP = {\n" + "\n".join(rows) + "\n}"


_HEADER = f"""
local STREAM = KEYS[1]
local TENANT = ARGV[1]
local NODE = ARGV[2]
local NOW
if ARGV[3] ~= '' then
  NOW = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local TIER = {SCORE_TIER}
local MAXLEN = '{STREAM_MAXLEN}'
local SETTLE_BATCH = {SETTLE_BATCH}
local RINGALL_MAX = {RINGALL_MAX}
local MAX_SKILL = {MAX_SKILL}
local DEFAULT_SKILL = {DEFAULT_SKILL}
local SKILL_STEP = {SKILL_STEP}
local CALL_RETENTION_SECONDS = {CALL_RETENTION_SECONDS}
local MAX_SKIPS = 1000
"""

# The helpers every script shares. Numbers written to Redis go through int(): Lua's own
# number-to-string conversion turns large integers into 1.7e+12.
_COMMON = r"""
local function int(n) return string.format('%d', n) end

local function fields_of(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local OFFERS = {}
local function result(code, state, extra)
  return {code, state or '', OFFERS, extra or {}}
end

-- Appends an event: name, value, ... pairs after `at` (the ms it took effect). Empty or
-- missing values are left out (varargs, so a nil cannot shorten the list).
local function emit(event, at, ...)
  local args = {'XADD', STREAM, 'MAXLEN', '~', MAXLEN, '*', 'event', event,
                'ts', string.format('%.3f', at / 1000), 'tenant', TENANT, 'node', NODE}
  local n = select('#', ...)
  local fields = {...}
  for i = 1, n, 2 do
    local value = fields[i + 1]
    if value ~= nil and value ~= false and value ~= '' then
      args[#args + 1] = fields[i]
      args[#args + 1] = value
    end
  end
  redis.call(unpack(args))
end

local function agent_fields(ext) return fields_of(redis.call('HGETALL', k_agent(ext))) end
local function call_fields(id) return fields_of(redis.call('HGETALL', k_call(id))) end
local function registered(ext) return redis.call('EXISTS', k_contact(ext)) == 1 end

-- The agent's next state from the generated table (omnicc.agent_state.next_state):
-- returns the new state and the refusal ('' when allowed).
local function agent_step(ext, state, event, auto_pause)
  local key = state .. '|' .. event .. '|' .. (registered(ext) and '1' or '0') .. '|'
    .. (auto_pause and '1' or '0')
  local step = AGENT_STEP[key]
  return step[1], step[2]
end

local function call_step(state, event)
  local step = CALL_STEP[state .. '|' .. event]
  return step[1], step[2]
end

local QUEUE_CFG = {}
local function queue_cfg(q)
  local cfg = QUEUE_CFG[q]
  if cfg == nil then
    local raw = fields_of(redis.call('HGETALL', k_queue(q)))
    cfg = {
      exists = raw.strategy ~= nil,
      strategy = raw.strategy or '',
      wrapup_ms = tonumber(raw.wrapup_ms or '0'),
      reservation_lease_ms = tonumber(raw.reservation_lease_ms or '0'),
      call_lease_ms = tonumber(raw.call_lease_ms or '0'),
      auto_pause_reason = raw.auto_pause_reason or '',
      service_level_ms = tonumber(raw.service_level_ms or '0'),
      max_waiting = tonumber(raw.max_waiting or '0'),
      overflow_when_no_agents = raw.overflow_when_no_agents == '1',
      rr_last = tonumber(raw.rr_last or '-1'),
    }
    QUEUE_CFG[q] = cfg
  end
  return cfg
end

local function waiting_score(call)
  return -tonumber(call.priority) * TIER + tonumber(call.enqueued_at)
end

-- Where a READY member sits in the queue's ready set (lowest first).
local function ready_score(q, ext)
  local strategy = queue_cfg(q).strategy
  local penalty = tonumber(redis.call('HGET', k_members(q), ext) or '0')
  local base
  if strategy == 'fewest-calls' then
    base = tonumber(redis.call('HGET', k_calls_taken(q), ext) or '0')
  elseif strategy == 'linear' or strategy == 'round-robin-memory' then
    base = tonumber(redis.call('HGET', k_positions(q), ext) or '0')
  elseif strategy == 'random' then
    base = 0
  elseif strategy == 'skills-weighted' then
    -- Highest skill first, then longest idle (to the second; pick_candidates breaks a tie
    -- within the second by the exact ms).
    local skill = tonumber(redis.call('HGET', k_skills(q), ext) or DEFAULT_SKILL)
    local last_ended = tonumber(redis.call('HGET', k_agent(ext), 'last_ended') or '0')
    base = (MAX_SKILL - skill) * SKILL_STEP + math.floor(last_ended / 1000)
  else -- longest-idle, ringall
    base = tonumber(redis.call('HGET', k_agent(ext), 'last_ended') or '0')
  end
  return penalty * TIER + base
end

-- The READY members the queue's strategy offers call `id` to (several for ringall).
local function pick_candidates(q, id)
  local ready = k_ready(q)
  local first = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if #first == 0 then return {} end
  local cfg = queue_cfg(q)
  local low = math.floor(tonumber(first[2]) / TIER) * TIER
  local below_next_tier = '(' .. int(low + TIER)
  if cfg.strategy == 'ringall' then
    return redis.call('ZRANGEBYSCORE', ready, int(low), below_next_tier, 'LIMIT', 0, RINGALL_MAX)
  elseif cfg.strategy == 'random' then
    -- The best penalty's members are ranks 0..n-1; draw one from the call id and the time.
    local n = redis.call('ZCOUNT', ready, '-inf', below_next_tier)
    local draw = tonumber(string.sub(redis.sha1hex(id .. ':' .. int(NOW)), 1, 8), 16) % n
    return redis.call('ZRANGE', ready, draw, draw)
  elseif cfg.strategy == 'round-robin-memory' then
    local after = redis.call('ZRANGEBYSCORE', ready, '(' .. int(low + cfg.rr_last),
      below_next_tier, 'LIMIT', 0, 1)
    if #after > 0 then return after end
  elseif cfg.strategy == 'skills-weighted' then
    -- Same penalty, skill and idle second: the longest idle to the ms (then extension).
    local tied = redis.call('ZRANGEBYSCORE', ready, first[2], first[2], 'LIMIT', 0, RINGALL_MAX)
    local best, best_ended = first[1], nil
    for _, ext in ipairs(tied) do
      local ended = tonumber(redis.call('HGET', k_agent(ext), 'last_ended') or '0')
      if best_ended == nil or ended < best_ended then best, best_ended = ext, ended end
    end
    return {best}
  end
  return {first[1]}
end

local match_agent -- defined below; become() calls it when an agent turns READY

-- Moves an agent between states and keeps every index in step: per-queue state counts,
-- ready sets, lease and wrap-up indexes. An agent turning READY then takes the best call.
local function become(ext, old, new, at)
  if old == new then return end
  local key = k_agent(ext)
  redis.call('HSET', key, 'state', new, 'since', int(at))
  local queues = redis.call('SMEMBERS', k_agent_queues(ext))
  for _, q in ipairs(queues) do
    redis.call('HINCRBY', k_agent_states(q), old, -1)
    redis.call('HINCRBY', k_agent_states(q), new, 1)
    if old == 'READY' then redis.call('ZREM', k_ready(q), ext) end
    if new == 'READY' then redis.call('ZADD', k_ready(q), int(ready_score(q, ext)), ext) end
  end
  if old == 'PAUSED' then redis.call('HDEL', key, 'reason') end
  if old == 'WRAPUP' then
    redis.call('ZREM', K_WRAPUP_ENDS, ext)
    redis.call('HDEL', key, 'wrapup_until')
  end
  if old == 'RESERVED' then
    redis.call('ZREM', K_RESERVATION_LEASES, ext)
    redis.call('HDEL', key, 'lease_until')
  end
  if new ~= 'RESERVED' and new ~= 'ONCALL' then redis.call('HDEL', key, 'call') end
  if new == 'READY' then match_agent(ext) end
end

local function reserve(id, exts)
  local call = call_fields(id)
  local q = call.queue
  local cfg = queue_cfg(q)
  local lease_until = NOW + cfg.reservation_lease_ms
  redis.call('ZREM', k_waiting(q), id)
  redis.call('ZREM', K_CALL_LEASES, id)
  redis.call('HSET', k_call(id), 'state', 'RESERVED')
  for _, ext in ipairs(exts) do
    redis.call('SADD', k_ringing(id), ext)
    redis.call('HSET', k_agent(ext), 'call', id, 'lease_until', int(lease_until))
    redis.call('ZADD', K_RESERVATION_LEASES, int(lease_until), ext)
    emit('call_reserved', NOW, 'call', id, 'queue', q, 'agent', ext, 'caller', call.caller,
      'did', call.did, 'call_node', call.node, 'lease_until', int(lease_until),
      'agent_state', 'RESERVED')
    become(ext, 'READY', 'RESERVED', NOW)
    OFFERS[#OFFERS + 1] = {id, ext, q, call.node, int(lease_until)}
  end
  if cfg.strategy == 'round-robin-memory' then
    local position = redis.call('HGET', k_positions(q), exts[#exts])
    redis.call('HSET', k_queue(q), 'rr_last', position)
    cfg.rr_last = tonumber(position)
  end
  redis.call('PUBLISH', k_offers(call.node),
    id .. ' ' .. table.concat(exts, ',') .. ' ' .. q .. ' ' .. int(lease_until))
end

-- A READY agent whose registration is gone (its contact key expired): never offered a call.
local function drop_unregistered(ext)
  emit('agent_logout', NOW, 'agent', ext, 'reason', 'unregistered', 'agent_state', 'OFFLINE')
  become(ext, 'READY', 'OFFLINE', NOW)
end

local function match_call(id)
  local q = redis.call('HGET', k_call(id), 'queue')
  for _ = 1, MAX_SKIPS do
    local candidates = pick_candidates(q, id)
    if #candidates == 0 then return end
    local chosen = {}
    for _, ext in ipairs(candidates) do
      if registered(ext) then chosen[#chosen + 1] = ext else drop_unregistered(ext) end
    end
    if #chosen > 0 then
      reserve(id, chosen)
      return
    end
  end
end

match_agent = function(ext)
  local best, best_score
  for _, q in ipairs(redis.call('SMEMBERS', k_agent_queues(ext))) do
    local top = redis.call('ZRANGE', k_waiting(q), 0, 0, 'WITHSCORES')
    if #top > 0 then
      local score = tonumber(top[2])
      if best == nil or score < best_score or (score == best_score and top[1] < best) then
        best, best_score = top[1], score
      end
    end
  end
  if best ~= nil then reserve(best, {ext}) end
end

local function unlink(ext, id, q, reason, agent_state, at)
  redis.call('SREM', k_ringing(id), ext)
  emit('call_released', at, 'call', id, 'queue', q, 'agent', ext, 'reason', reason,
    'agent_state', agent_state)
end

local function count_within_service_level(q, counter, wait_ms)
  if wait_ms <= queue_cfg(q).service_level_ms then
    redis.call('HINCRBY', k_stats(q), counter .. '_within_service_level', 1)
  end
end

-- A WAITING or RESERVED call leaves the queue unanswered (ABANDONED or FAILED_OVER);
-- agents that were ringing for it are released at once.
local function finish_unanswered(id, final_state, event, reason, release_reason, at)
  local call = call_fields(id)
  local q = call.queue
  local ringing = redis.call('SMEMBERS', k_ringing(id))
  redis.call('HSET', k_call(id), 'state', final_state, 'ended_at', int(at), 'reason', reason)
  redis.call('EXPIRE', k_call(id), CALL_RETENTION_SECONDS)
  redis.call('ZREM', k_waiting(q), id)
  redis.call('ZREM', K_CALL_LEASES, id)
  redis.call('DEL', k_ringing(id))
  local wait_ms = at - tonumber(call.enqueued_at)
  local counter = final_state == 'ABANDONED' and 'calls_abandoned' or 'calls_failed_over'
  redis.call('HINCRBY', k_stats(q), counter, 1)
  if final_state == 'ABANDONED' then
    count_within_service_level(q, counter, wait_ms)
    redis.call('HINCRBY', k_stats(q), 'wait_ms_abandoned_total', int(wait_ms))
  end
  emit(event, at, 'call', id, 'queue', q, 'caller', call.caller, 'did', call.did,
    'call_node', call.node, 'reason', reason, 'wait_ms', int(wait_ms),
    'outcome', string.lower(final_state))
  for _, ext in ipairs(ringing) do
    local target = agent_step(ext, 'RESERVED', 'release', false)
    unlink(ext, id, q, release_reason, target, at)
    become(ext, 'RESERVED', target, at)
  end
end

-- After an agent let go of a RESERVED call: once no agent rings it any more, the call waits
-- again at its old place if its holder still vouches for the caller, else it fails over.
local function requeue_if_unheld(id, at)
  local call = call_fields(id)
  if call.state ~= 'RESERVED' or redis.call('SCARD', k_ringing(id)) > 0 then return end
  if tonumber(call.lease_until) < NOW then
    finish_unanswered(id, 'FAILED_OVER', 'call_failed_over', 'call_lease_expired',
      'call_failed_over', at)
    return
  end
  local q = call.queue
  redis.call('HSET', k_call(id), 'state', 'WAITING')
  redis.call('ZADD', k_waiting(q), int(waiting_score(call)), id)
  redis.call('ZADD', K_CALL_LEASES, call.lease_until, id)
  emit('call_requeued', at, 'call', id, 'queue', q, 'call_node', call.node)
  match_call(id)
end

-- The agent lets go of its reservation of call `id` (no answer, lease over, pause, logout,
-- unregistered). The call is offered to others before the agent can be READY again.
local function let_go(ext, id, reason, agent_event, auto_pause, at)
  local q = redis.call('HGET', k_call(id), 'queue')
  local target = agent_step(ext, 'RESERVED', agent_event, auto_pause)
  unlink(ext, id, q, reason, target, at)
  requeue_if_unheld(id, at)
  become(ext, 'RESERVED', target, at)
  return target
end

local function end_wrapup(ext, at)
  local target = agent_step(ext, 'WRAPUP', 'wrapup_end', false)
  emit('agent_wrapup_done', at, 'agent', ext, 'agent_state', target,
    'reason', target == 'OFFLINE' and 'unregistered' or '')
  become(ext, 'WRAPUP', target, at)
end

-- A CONNECTED call ends: hung up (`reason` says who), its lease ran out (its node died), or
-- its agent was logged out by force (`logout`: the caller moves the agent OFFLINE). Else the
-- agent goes into the wrap-up of the call's queue, or its own wrap-up time.
local function end_connected(id, reason, at, logout)
  local call = call_fields(id)
  local ext, q = call.agent, call.queue
  local talk_ms = at - tonumber(call.answered_at)
  redis.call('HSET', k_call(id), 'state', 'ENDED', 'ended_at', int(at), 'reason', reason)
  redis.call('EXPIRE', k_call(id), CALL_RETENTION_SECONDS)
  redis.call('ZREM', K_CONNECTED_LEASES, id)
  redis.call('SREM', k_node_connected(call.node), id)
  redis.call('HINCRBY', k_stats(q), 'calls_ended', 1)
  redis.call('HINCRBY', k_stats(q), 'talk_ms_total', int(talk_ms))
  if logout then
    emit('call_ended', at, 'call', id, 'queue', q, 'agent', ext, 'caller', call.caller,
      'did', call.did, 'call_node', call.node, 'talk_ms', int(talk_ms), 'reason', reason,
      'outcome', 'answered', 'agent_state', 'OFFLINE')
    return
  end
  -- The wrap-up of the call's own queue, whichever queue the agent took it from.
  local wrapup_ms = tonumber(redis.call('HGET', k_agent(ext), 'wrapup_ms') or '')
    or queue_cfg(q).wrapup_ms
  local wrapup_until = at + wrapup_ms
  redis.call('HSET', k_agent(ext), 'last_ended', int(at), 'wrapup_until', int(wrapup_until))
  emit('call_ended', at, 'call', id, 'queue', q, 'agent', ext, 'caller', call.caller,
    'did', call.did, 'call_node', call.node, 'talk_ms', int(talk_ms), 'reason', reason,
    'outcome', 'answered', 'agent_state', 'WRAPUP', 'wrapup_until', int(wrapup_until))
  become(ext, 'ONCALL', 'WRAPUP', at)
  redis.call('ZADD', K_WRAPUP_ENDS, int(wrapup_until), ext)
  if wrapup_ms <= 0 then end_wrapup(ext, at) end
end

-- What is due, in the order that keeps dead callers from being offered: calls whose holder
-- stopped renewing (waiting, then connected ones), then reservations whose lease ran out,
-- then wrap-ups that are over.
local function settle()
  local done = {0, 0, 0, 0}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_CALL_LEASES, '-inf', '(' .. int(NOW),
      'LIMIT', 0, SETTLE_BATCH)) do
    local lease_until = tonumber(redis.call('HGET', k_call(id), 'lease_until'))
    finish_unanswered(id, 'FAILED_OVER', 'call_failed_over', 'call_lease_expired',
      'call_failed_over', lease_until)
    done[1] = done[1] + 1
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_CONNECTED_LEASES, '-inf',
      '(' .. int(NOW), 'LIMIT', 0, SETTLE_BATCH)) do
    local lease_until = tonumber(redis.call('ZSCORE', K_CONNECTED_LEASES, id))
    end_connected(id, 'lease_expired', lease_until, false)
    done[4] = done[4] + 1
  end
  for _, ext in ipairs(redis.call('ZRANGEBYSCORE', K_RESERVATION_LEASES, '-inf',
      '(' .. int(NOW), 'LIMIT', 0, SETTLE_BATCH)) do
    local agent = agent_fields(ext)
    let_go(ext, agent.call, 'reservation_expired', 'release', false, tonumber(agent.lease_until))
    done[2] = done[2] + 1
  end
  for _, ext in ipairs(redis.call('ZRANGEBYSCORE', K_WRAPUP_ENDS, '-inf', int(NOW),
      'LIMIT', 0, SETTLE_BATCH)) do
    end_wrapup(ext, tonumber(redis.call('ZSCORE', K_WRAPUP_ENDS, ext)))
    done[3] = done[3] + 1
  end
  return done
end

local function agent_state_now(ext)
  return redis.call('HGET', k_agent(ext), 'state') or 'OFFLINE'
end
"""


def _prelude() -> str:
    return "\n".join([
        _HEADER,
        *(_lua_key(name, fn, params) for name, fn, params in _KEY_FUNCTIONS),
        _lua_agent_steps(),
        _lua_call_steps(),
        _COMMON,
    ])


PRELUDE = _prelude()


def _script(body: str) -> str:
    return PRELUDE + "\n-- the operation\n" + body


# ARGV[4] queue, ARGV[5...] setting, value pairs
CONFIGURE_QUEUE = _script(r"""
local q = ARGV[4]
settle()
local old_strategy = redis.call('HGET', k_queue(q), 'strategy')
local settings = {}
for i = 5, #ARGV do settings[#settings + 1] = ARGV[i] end
redis.call('HSET', k_queue(q), unpack(settings))
redis.call('SADD', K_QUEUES, q)
QUEUE_CFG[q] = nil
local cfg = queue_cfg(q)
if old_strategy ~= cfg.strategy then
  -- The ready members' scores follow the strategy: recompute them (an admin operation).
  for _, ext in ipairs(redis.call('ZRANGE', k_ready(q), 0, -1)) do
    redis.call('ZADD', k_ready(q), int(ready_score(q, ext)), ext)
  end
end
emit('queue_configured', NOW, 'queue', q, 'strategy', cfg.strategy)
return result('ok', '')
""")

# ARGV[4] queue, ARGV[5] extension, ARGV[6] penalty, ARGV[7] skill ('' : DEFAULT_SKILL)
ADD_MEMBER = _script(r"""
local q, ext, penalty, skill = ARGV[4], ARGV[5], ARGV[6], ARGV[7] or ''
if skill == '' then skill = tostring(DEFAULT_SKILL) end
settle()
if not queue_cfg(q).exists then return result('unknown_queue', '') end
redis.call('SADD', K_AGENTS, ext)
local state = agent_state_now(ext)
local joined = redis.call('HSET', k_members(q), ext, penalty) == 1
redis.call('HSET', k_skills(q), ext, skill)
if joined then
  redis.call('HSET', k_positions(q), ext, redis.call('HINCRBY', k_queue(q), 'next_position', 1))
  redis.call('SADD', k_agent_queues(ext), q)
  redis.call('HINCRBY', k_agent_states(q), state, 1)
end
emit('queue_member_added', NOW, 'queue', q, 'agent', ext, 'penalty', penalty,
  'skill', skill)
if state == 'READY' then
  redis.call('ZADD', k_ready(q), int(ready_score(q, ext)), ext)
  match_agent(ext)
end
return result('ok', agent_state_now(ext))
""")

# ARGV[4] queue, ARGV[5] extension
REMOVE_MEMBER = _script(r"""
local q, ext = ARGV[4], ARGV[5]
settle()
if redis.call('HDEL', k_members(q), ext) == 0 then return result('not_member', '') end
local state = agent_state_now(ext)
redis.call('HDEL', k_positions(q), ext)
redis.call('HDEL', k_skills(q), ext)
redis.call('SREM', k_agent_queues(ext), q)
redis.call('HINCRBY', k_agent_states(q), state, -1)
redis.call('ZREM', k_ready(q), ext)
emit('queue_member_removed', NOW, 'queue', q, 'agent', ext)
return result('ok', state)
""")

# ARGV[4] extension
LOGIN = _script(r"""
local ext = ARGV[4]
settle()
redis.call('SADD', K_AGENTS, ext)
local agent = agent_fields(ext)
local state = agent.state or 'OFFLINE'
local new, refusal = agent_step(ext, state, 'login', false)
if refusal ~= '' then return result(refusal, state) end
-- Longest-idle counts a fresh agent idle from its first login.
if agent.last_ended == nil then redis.call('HSET', k_agent(ext), 'last_ended', int(NOW)) end
emit('agent_login', NOW, 'agent', ext, 'agent_state', new)
become(ext, state, new, NOW)
return result('ok', agent_state_now(ext))
""")

# ARGV[4] extension, ARGV[5] '1' for a forced logout (a supervisor: ends a call in progress)
LOGOUT = _script(r"""
local ext, force = ARGV[4], ARGV[5] == '1'
settle()
local agent = agent_fields(ext)
local state = agent.state or 'OFFLINE'
local event = force and 'force_logout' or 'logout'
local new, refusal = agent_step(ext, state, event, false)
if refusal ~= '' then return result(refusal, state) end
if state == new then return result('ok', state) end
local reason = force and 'forced' or 'requested'
if state == 'RESERVED' then
  let_go(ext, agent.call, 'agent_logout', event, false, NOW)
elseif state == 'ONCALL' then
  end_connected(agent.call, 'agent_forced_logout', NOW, true)
  become(ext, state, new, NOW)
else
  become(ext, state, new, NOW)
end
emit('agent_logout', NOW, 'agent', ext, 'reason', reason, 'agent_state', 'OFFLINE')
return result('ok', agent_state_now(ext))
""")

# ARGV[4] extension, ARGV[5] reason
PAUSE = _script(r"""
local ext, reason = ARGV[4], ARGV[5]
settle()
local agent = agent_fields(ext)
local state = agent.state or 'OFFLINE'
local new, refusal = agent_step(ext, state, 'pause', false)
if refusal ~= '' then return result(refusal, state) end
if state == 'RESERVED' then
  let_go(ext, agent.call, 'agent_paused', 'pause', false, NOW)
else
  become(ext, state, new, NOW)
end
redis.call('HSET', k_agent(ext), 'reason', reason)
emit('agent_paused', NOW, 'agent', ext, 'reason', reason, 'agent_state', new,
  'from_state', state)
return result('ok', new)
""")

# ARGV[4] extension
UNPAUSE = _script(r"""
local ext = ARGV[4]
settle()
local state = agent_state_now(ext)
local new, refusal = agent_step(ext, state, 'unpause', false)
if refusal ~= '' then return result(refusal, state) end
emit('agent_unpaused', NOW, 'agent', ext, 'agent_state', new)
become(ext, state, new, NOW)
return result('ok', agent_state_now(ext))
""")

# ARGV[4] extension. The phone's registration ended (REGISTER with Expires: 0).
UNREGISTER = _script(r"""
local ext = ARGV[4]
settle()
redis.call('DEL', k_contact(ext))
local agent = agent_fields(ext)
local state = agent.state or 'OFFLINE'
local new = agent_step(ext, state, 'unregister', false)
if new == state then return result('ok', state) end
if state == 'RESERVED' then
  let_go(ext, agent.call, 'unregistered', 'unregister', false, NOW)
else
  become(ext, state, new, NOW)
end
emit('agent_logout', NOW, 'agent', ext, 'reason', 'unregistered', 'agent_state', new)
return result('ok', new)
""")

# ARGV[4] call id, ARGV[5] queue, ARGV[6] caller, ARGV[7] did, ARGV[8] priority,
# ARGV[9] the node whose session holds the caller
ENQUEUE = _script(r"""
local id, q, caller, did, priority, call_node =
  ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
settle()
if redis.call('EXISTS', k_call(id)) == 1 then return result('call_exists', '') end
local cfg = queue_cfg(q)
if not cfg.exists then return result('unknown_queue', '') end
local function overflow(reason)
  redis.call('HINCRBY', k_stats(q), 'calls_overflowed', 1)
  emit('call_overflowed', NOW, 'call', id, 'queue', q, 'caller', caller, 'did', did,
    'call_node', call_node, 'reason', reason, 'outcome', 'overflowed')
  return result(reason, '')
end
if cfg.max_waiting > 0 and redis.call('ZCARD', k_waiting(q)) >= cfg.max_waiting then
  return overflow('queue_full')
end
if cfg.overflow_when_no_agents then
  local logged_in = 0
  for _, n in ipairs(redis.call('HMGET', k_agent_states(q),
      'READY', 'PAUSED', 'RESERVED', 'ONCALL', 'WRAPUP')) do
    logged_in = logged_in + tonumber(n or '0')
  end
  if logged_in == 0 then return overflow('no_agents') end
end
local lease_until = NOW + cfg.call_lease_ms
redis.call('HSET', k_call(id), 'queue', q, 'state', 'WAITING', 'priority', priority,
  'enqueued_at', int(NOW), 'caller', caller, 'did', did, 'node', call_node,
  'lease_until', int(lease_until))
redis.call('ZADD', k_waiting(q), int(-tonumber(priority) * TIER + NOW), id)
redis.call('ZADD', K_CALL_LEASES, int(lease_until), id)
redis.call('HINCRBY', k_stats(q), 'calls_offered', 1)
emit('call_enqueued', NOW, 'call', id, 'queue', q, 'caller', caller, 'did', did,
  'call_node', call_node, 'priority', priority)
match_call(id)
local rank = redis.call('ZRANK', k_waiting(q), id)
return result('ok', redis.call('HGET', k_call(id), 'state'),
  {'position', rank and int(rank + 1) or '0'})
""")


def _reserved_call_guard(event: str) -> str:
    """Lua that loads call ARGV[4] and checks that agent ARGV[5] holds its reservation, and
    when ARGV[6] is given, that it is still the reservation whose lease ends then (a fencing
    token: a late report about an expired reservation cannot act on a newer one)."""
    return rf"""
local id, ext, token = ARGV[4], ARGV[5], ARGV[6]
settle()
local call = call_fields(id)
if call.state == nil then return result('unknown_call', '') end
local _, refusal = call_step(call.state, '{event}')
if refusal ~= '' then return result(refusal, call.state) end
if redis.call('SISMEMBER', k_ringing(id), ext) == 0
    or (token ~= '' and redis.call('HGET', k_agent(ext), 'lease_until') ~= token) then
  return result('not_reserved', call.state)
end
local q = call.queue
local cfg = queue_cfg(q)
"""


# ARGV[4] call id, ARGV[5] extension, ARGV[6] the offer's lease_until or ''.
# Only while the agent's reservation holds.
ANSWER = _script(_reserved_call_guard("answer") + r"""
redis.call('SREM', k_ringing(id), ext)
local others = redis.call('SMEMBERS', k_ringing(id))
redis.call('DEL', k_ringing(id))
local wait_ms = NOW - tonumber(call.enqueued_at)
-- From now on the call's lease is renewed by its node as a whole (renew_connected_calls).
local lease_until = NOW + cfg.call_lease_ms
redis.call('HSET', k_call(id), 'state', 'CONNECTED', 'agent', ext, 'answered_at', int(NOW),
  'lease_until', int(lease_until))
redis.call('ZADD', K_CONNECTED_LEASES, int(lease_until), id)
redis.call('SADD', k_node_connected(call.node), id)
redis.call('HINCRBY', k_stats(q), 'calls_answered', 1)
redis.call('HINCRBY', k_stats(q), 'wait_ms_answered_total', int(wait_ms))
count_within_service_level(q, 'calls_answered', wait_ms)
redis.call('HINCRBY', k_calls_taken(q), ext, 1)
redis.call('HINCRBY', k_agent(ext), 'calls_taken', 1)
emit('call_answered', NOW, 'call', id, 'queue', q, 'agent', ext, 'caller', call.caller,
  'did', call.did, 'call_node', call.node, 'wait_ms', int(wait_ms), 'outcome', 'answered',
  'agent_state', 'ONCALL')
become(ext, 'RESERVED', 'ONCALL', NOW)
for _, other in ipairs(others) do
  local target = agent_step(other, 'RESERVED', 'release', false)
  unlink(other, id, q, 'answered_elsewhere', target, NOW)
  become(other, 'RESERVED', target, NOW)
end
return result('ok', 'CONNECTED')
""")

# ARGV[4] call id, ARGV[5] extension, ARGV[6] the offer's lease_until or '',
# ARGV[7] outcome (no_answer, rejected, busy),
# ARGV[8] pause reason ('' : the queue's auto_pause_reason, if any)
NO_ANSWER = _script(_reserved_call_guard("unreserve") + r"""
local outcome, pause_reason = ARGV[7], ARGV[8]
if pause_reason == '' then pause_reason = cfg.auto_pause_reason end
redis.call('HINCRBY', k_stats(q), 'rings_unanswered', 1)
-- The node reporting the ring's result is alive and holds the caller.
redis.call('HSET', k_call(id), 'lease_until', int(NOW + cfg.call_lease_ms))
local target = let_go(ext, id, outcome, 'no_answer', pause_reason ~= '', NOW)
if target == 'PAUSED' then
  redis.call('HSET', k_agent(ext), 'reason', pause_reason)
  emit('agent_paused', NOW, 'agent', ext, 'reason', pause_reason, 'agent_state', 'PAUSED',
    'from_state', 'RESERVED')
end
return result('ok', agent_state_now(ext))
""")

# ARGV[4] call id, ARGV[5] who hung up (caller, agent, ...)
HANGUP = _script(r"""
local id, reason = ARGV[4], ARGV[5]
settle()
local call = call_fields(id)
if call.state == nil then return result('unknown_call', '') end
local _, refusal = call_step(call.state, 'hangup')
if refusal ~= '' then return result(refusal, call.state) end
end_connected(id, reason, NOW, false)
return result('ok', 'ENDED')
""")


def _unanswered_end(event: str, final_state: str, call_event: str, release_reason: str) -> str:
    return _script(rf"""
local id, reason = ARGV[4], ARGV[5]
settle()
local call = call_fields(id)
if call.state == nil then return result('unknown_call', '') end
local _, refusal = call_step(call.state, '{call_event}')
if refusal ~= '' then return result(refusal, call.state) end
finish_unanswered(id, '{final_state}', '{event}', reason, '{release_reason}', NOW)
return result('ok', '{final_state}')
""")


# ARGV[4] call id, ARGV[5] reason. The caller hung up while waiting or while agents rang.
ABANDON = _unanswered_end("call_abandoned", "ABANDONED", "abandon", "caller_abandoned")
# ARGV[4] call id, ARGV[5] reason (max_wait, ...). The call leaves for its failover.
FAIL_OVER = _unanswered_end("call_failed_over", "FAILED_OVER", "fail_over", "call_failed_over")


# ARGV[4] call id. The holding node's waiting session vouches that its caller is there.
RENEW_CALL_LEASE = _script(r"""
local id = ARGV[4]
settle()
local call = call_fields(id)
if call.state == nil then return result('unknown_call', '') end
if call.state ~= 'WAITING' and call.state ~= 'RESERVED' then
  return result(call.state == 'CONNECTED' and 'connected' or 'call_over', call.state)
end
if call.node ~= NODE then return result('not_holder', call.state, {'node', call.node}) end
local lease_until = NOW + queue_cfg(call.queue).call_lease_ms
redis.call('HSET', k_call(id), 'lease_until', int(lease_until))
if call.state == 'WAITING' then redis.call('ZADD', K_CALL_LEASES, int(lease_until), id) end
return result('ok', call.state, {'lease_until', int(lease_until)})
""")

# ARGV[4] call id. This node now holds the caller (its former node's session died): the call
# keeps its place, and its current reservations come back as offers to dial.
ADOPT = _script(r"""
local id = ARGV[4]
settle()
local call = call_fields(id)
if call.state == nil then return result('unknown_call', '') end
if call.state ~= 'WAITING' and call.state ~= 'RESERVED' then
  return result(call.state == 'CONNECTED' and 'connected' or 'call_over', call.state)
end
local lease_until = NOW + queue_cfg(call.queue).call_lease_ms
redis.call('HSET', k_call(id), 'node', NODE, 'lease_until', int(lease_until))
if call.state == 'WAITING' then redis.call('ZADD', K_CALL_LEASES, int(lease_until), id) end
emit('call_adopted', NOW, 'call', id, 'queue', call.queue, 'call_node', NODE,
  'from_node', call.node)
for _, ext in ipairs(redis.call('SMEMBERS', k_ringing(id))) do
  OFFERS[#OFFERS + 1] = {id, ext, call.queue, NODE,
    redis.call('HGET', k_agent(ext), 'lease_until')}
end
return result('ok', call.state)
""")

# Settles what is due (see the module docstring) when no other script runs.
TICK = _script(r"""
local done = settle()
return result('ok', '', {'calls_failed_over', int(done[1]),
  'reservations_expired', int(done[2]), 'wrapups_ended', int(done[3]),
  'connected_calls_ended', int(done[4])})
""")

# The node running it vouches for the CONNECTED calls it holds: their leases start again.
RENEW_CONNECTED_CALLS = _script(r"""
settle()
local renewed = 0
for _, id in ipairs(redis.call('SMEMBERS', k_node_connected(NODE))) do
  local lease_until = NOW + queue_cfg(redis.call('HGET', k_call(id), 'queue')).call_lease_ms
  redis.call('HSET', k_call(id), 'lease_until', int(lease_until))
  redis.call('ZADD', K_CONNECTED_LEASES, int(lease_until), id)
  renewed = renewed + 1
end
return result('ok', '', {'renewed', int(renewed)})
""")

SCRIPTS: dict[str, str] = {
    "configure_queue": CONFIGURE_QUEUE,
    "add_member": ADD_MEMBER,
    "remove_member": REMOVE_MEMBER,
    "login": LOGIN,
    "logout": LOGOUT,
    "pause": PAUSE,
    "unpause": UNPAUSE,
    "unregister": UNREGISTER,
    "enqueue": ENQUEUE,
    "answer": ANSWER,
    "no_answer": NO_ANSWER,
    "hangup": HANGUP,
    "abandon": ABANDON,
    "fail_over": FAIL_OVER,
    "renew_call_lease": RENEW_CALL_LEASE,
    "adopt": ADOPT,
    "tick": TICK,
    "renew_connected_calls": RENEW_CONNECTED_CALLS,
}
