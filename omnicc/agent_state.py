"""The ACD's state machines, as pure tables: which agent and call transitions are allowed.

Nothing here touches Redis. omnicc/acd_lua.py generates the Lua transition tables from
`next_state` and `next_call_state`, so the atomic scripts and these tables cannot disagree;
the scripts add only the side effects (queues, leases, counters, events).

Agent states (as OpenSIPS call_center and OMniLeads name them)::

    OFFLINE --login--> READY <--pause/unpause--> PAUSED(reason)
    READY --reserve--> RESERVED (ringing) --answer--> ONCALL --hangup--> WRAPUP
      (hangup also when the connected call's lease ran out: its node died)
    WRAPUP --wrapup_end (at wrapup_until)--> READY
    RESERVED --no_answer (no answer, reject, busy)--> READY, or PAUSED when auto-pause is asked
    RESERVED --release (lease ran out, caller gone, another agent answered)--> READY
    READY/PAUSED/RESERVED/WRAPUP --logout--> OFFLINE;  any --force_logout--> OFFLINE

Rules beyond the arrows:

- Only a registered agent can be READY. A transition the agent asks for (login, unpause) is
  refused when its phone is not registered; an automatic return to READY (wrap-up over,
  reservation released) of an unregistered agent goes to OFFLINE instead.
- pause and logout of a RESERVED agent are allowed and withdraw the reservation: the call
  goes back to its place in the queue and the agent never gets it. An agent that pauses
  or leaves must not be handed the call that arrived at the same moment.
- pause and logout of an agent ONCALL are refused (`on_call`): the agent is talking.
  force_logout (a supervisor) ends the call.
- unregister (the phone's registration ended) takes READY, PAUSED and RESERVED agents
  OFFLINE; an agent on a call or in wrap-up keeps its state (the media may still flow)
  and goes OFFLINE instead of READY when that ends.

Call states::

    (enqueue) WAITING --reserve--> RESERVED --answer--> CONNECTED --hangup--> ENDED
    RESERVED --unreserve (the last ringing agent released)--> WAITING, same place in the queue
    WAITING/RESERVED --abandon--> ABANDONED;  WAITING/RESERVED --fail_over--> FAILED_OVER
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AgentState(StrEnum):
    OFFLINE = "OFFLINE"
    READY = "READY"
    PAUSED = "PAUSED"
    RESERVED = "RESERVED"  # a call rings at the agent; held by a lease
    ONCALL = "ONCALL"
    WRAPUP = "WRAPUP"  # after-call work; ends by itself at wrapup_until


class AgentEvent(StrEnum):
    LOGIN = "login"
    LOGOUT = "logout"
    FORCE_LOGOUT = "force_logout"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    RESERVE = "reserve"
    ANSWER = "answer"
    NO_ANSWER = "no_answer"  # the agent did not answer, rejected, or was busy
    RELEASE = "release"  # the reservation was withdrawn, not by the agent
    HANGUP = "hangup"
    WRAPUP_END = "wrapup_end"
    UNREGISTER = "unregister"


class CallState(StrEnum):
    WAITING = "WAITING"
    RESERVED = "RESERVED"
    CONNECTED = "CONNECTED"
    ENDED = "ENDED"
    ABANDONED = "ABANDONED"
    FAILED_OVER = "FAILED_OVER"


class CallEvent(StrEnum):
    RESERVE = "reserve"
    ANSWER = "answer"
    UNRESERVE = "unreserve"
    HANGUP = "hangup"
    ABANDON = "abandon"
    FAIL_OVER = "fail_over"


class Refusal(StrEnum):
    """Why the ACD refused an operation; the result code of every refused script."""

    NOT_REGISTERED = "not_registered"
    ALREADY_LOGGED_IN = "already_logged_in"
    NOT_LOGGED_IN = "not_logged_in"
    ON_CALL = "on_call"
    NOT_PAUSED = "not_paused"
    NOT_READY = "not_ready"
    NOT_RESERVED = "not_reserved"  # no reservation (any more) for this agent and call
    NOT_ON_CALL = "not_on_call"
    NOT_IN_WRAPUP = "not_in_wrapup"
    NOT_WAITING = "not_waiting"
    NOT_CONNECTED = "not_connected"
    CALL_OVER = "call_over"  # the call already ended, was abandoned or failed over
    CONNECTED = "connected"  # the call is connected: it ends by hangup, not abandon
    UNKNOWN_CALL = "unknown_call"
    UNKNOWN_QUEUE = "unknown_queue"
    CALL_EXISTS = "call_exists"
    QUEUE_FULL = "queue_full"
    NO_AGENTS = "no_agents"
    NOT_HOLDER = "not_holder"  # another node has adopted the call


LIVE_CALL_STATES = frozenset({CallState.WAITING, CallState.RESERVED, CallState.CONNECTED})
FINAL_CALL_STATES = frozenset({CallState.ENDED, CallState.ABANDONED, CallState.FAILED_OVER})
LOGGED_IN_STATES = frozenset(set(AgentState) - {AgentState.OFFLINE})

_A, _E = AgentState, AgentEvent

# The allowed agent transitions before the registration and auto-pause rules (next_state).
AGENT_TRANSITIONS: dict[AgentState, dict[AgentEvent, AgentState]] = {
    _A.OFFLINE: {
        _E.LOGIN: _A.READY,
        _E.FORCE_LOGOUT: _A.OFFLINE,
        _E.UNREGISTER: _A.OFFLINE,
    },
    _A.READY: {
        _E.LOGOUT: _A.OFFLINE,
        _E.FORCE_LOGOUT: _A.OFFLINE,
        _E.PAUSE: _A.PAUSED,
        _E.RESERVE: _A.RESERVED,
        _E.UNREGISTER: _A.OFFLINE,
    },
    _A.PAUSED: {
        _E.LOGOUT: _A.OFFLINE,
        _E.FORCE_LOGOUT: _A.OFFLINE,
        _E.PAUSE: _A.PAUSED,  # a new reason
        _E.UNPAUSE: _A.READY,
        _E.UNREGISTER: _A.OFFLINE,
    },
    _A.RESERVED: {
        _E.LOGOUT: _A.OFFLINE,
        _E.FORCE_LOGOUT: _A.OFFLINE,
        _E.PAUSE: _A.PAUSED,
        _E.ANSWER: _A.ONCALL,
        _E.NO_ANSWER: _A.READY,
        _E.RELEASE: _A.READY,
        _E.UNREGISTER: _A.OFFLINE,
    },
    _A.ONCALL: {
        _E.FORCE_LOGOUT: _A.OFFLINE,
        _E.HANGUP: _A.WRAPUP,
        _E.UNREGISTER: _A.ONCALL,
    },
    _A.WRAPUP: {
        _E.LOGOUT: _A.OFFLINE,
        _E.FORCE_LOGOUT: _A.OFFLINE,
        _E.PAUSE: _A.PAUSED,
        _E.WRAPUP_END: _A.READY,
        _E.UNREGISTER: _A.WRAPUP,
    },
}

# Why an event not allowed in a state is refused, when it is not the event's usual reason.
_REFUSAL_IN_STATE: dict[tuple[AgentState, AgentEvent], Refusal] = {
    (_A.ONCALL, _E.LOGOUT): Refusal.ON_CALL,
    (_A.ONCALL, _E.PAUSE): Refusal.ON_CALL,
    (_A.OFFLINE, _E.UNPAUSE): Refusal.NOT_LOGGED_IN,
}
_REFUSAL_OF_EVENT: dict[AgentEvent, Refusal] = {
    _E.LOGIN: Refusal.ALREADY_LOGGED_IN,
    _E.LOGOUT: Refusal.NOT_LOGGED_IN,
    _E.PAUSE: Refusal.NOT_LOGGED_IN,
    _E.UNPAUSE: Refusal.NOT_PAUSED,
    _E.RESERVE: Refusal.NOT_READY,
    _E.ANSWER: Refusal.NOT_RESERVED,
    _E.NO_ANSWER: Refusal.NOT_RESERVED,
    _E.RELEASE: Refusal.NOT_RESERVED,
    _E.HANGUP: Refusal.NOT_ON_CALL,
    _E.WRAPUP_END: Refusal.NOT_IN_WRAPUP,
}

# Events the agent asks for: refused when they would make an unregistered agent READY.
# Every other way to READY (wrap-up over, a reservation released) goes to OFFLINE instead.
REQUESTED_EVENTS = frozenset({_E.LOGIN, _E.UNPAUSE})


@dataclass(frozen=True)
class AgentStep:
    state: AgentState  # the state after the event (unchanged when refused)
    refusal: Refusal | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def next_state(state: AgentState, event: AgentEvent, *, registered: bool = True,
               auto_pause: bool = False) -> AgentStep:
    """The agent's state after `event`, or the refusal. `registered`: the phone is registered
    now; `auto_pause`: a no-answer pauses the agent (the queue or the dialplan asks it)."""
    target = AGENT_TRANSITIONS[state].get(event)
    if target is None:
        refusal = _REFUSAL_IN_STATE.get((state, event), _REFUSAL_OF_EVENT[event])
        return AgentStep(state, refusal)
    if event is _E.NO_ANSWER and auto_pause:
        target = _A.PAUSED
    if target is _A.READY and not registered:
        if event in REQUESTED_EVENTS:
            return AgentStep(state, Refusal.NOT_REGISTERED)
        target = _A.OFFLINE
    return AgentStep(target)


_C, _CE = CallState, CallEvent

CALL_TRANSITIONS: dict[CallState, dict[CallEvent, CallState]] = {
    _C.WAITING: {
        _CE.RESERVE: _C.RESERVED,
        _CE.ABANDON: _C.ABANDONED,
        _CE.FAIL_OVER: _C.FAILED_OVER,
    },
    _C.RESERVED: {
        _CE.ANSWER: _C.CONNECTED,
        _CE.UNRESERVE: _C.WAITING,
        _CE.ABANDON: _C.ABANDONED,
        _CE.FAIL_OVER: _C.FAILED_OVER,
    },
    _C.CONNECTED: {_CE.HANGUP: _C.ENDED},
    _C.ENDED: {},
    _C.ABANDONED: {},
    _C.FAILED_OVER: {},
}

_CALL_REFUSAL_OF_EVENT: dict[CallEvent, Refusal] = {
    _CE.RESERVE: Refusal.NOT_WAITING,
    _CE.ANSWER: Refusal.NOT_RESERVED,
    _CE.UNRESERVE: Refusal.NOT_RESERVED,
    _CE.HANGUP: Refusal.NOT_CONNECTED,
    _CE.ABANDON: Refusal.CONNECTED,
    _CE.FAIL_OVER: Refusal.CONNECTED,
}


@dataclass(frozen=True)
class CallStep:
    state: CallState
    refusal: Refusal | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def next_call_state(state: CallState, event: CallEvent) -> CallStep:
    """The call's state after `event`, or the refusal (`call_over` once the call is over)."""
    target = CALL_TRANSITIONS[state].get(event)
    if target is not None:
        return CallStep(target)
    if state in FINAL_CALL_STATES:
        return CallStep(state, Refusal.CALL_OVER)
    return CallStep(state, _CALL_REFUSAL_OF_EVENT[event])


def effective_state(state: AgentState, wrapup_until_ms: int | None, now_ms: int, *,
                    registered: bool = True) -> AgentState:
    """What a reader should show: a wrap-up that is over has ended (READY, or OFFLINE when
    the phone is no longer registered) even before a script has moved the agent; the
    scripts end wrap-ups lazily, exactly at wrapup_until."""
    if state is AgentState.WRAPUP and wrapup_until_ms is not None and now_ms >= wrapup_until_ms:
        return next_state(state, AgentEvent.WRAPUP_END, registered=registered).state
    return state
