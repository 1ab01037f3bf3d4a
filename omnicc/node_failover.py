"""Whether Kamailio tries the next Asterisk node after one answered a call with a failure.

Kamailio sends each call from a trunk or an agent to one Asterisk node (dispatcher) and, in
its failure route, may send it to the next. That is right only when the node itself could
not serve: it did not answer at all, its FastAGI server could not be reached, it is
overloaded. It is wrong once the node did its work and the outcome is final: an agent's
outbound call whose trunks all failed would be dialled again, carrier by carrier, from
the next node.

Asterisk says which in the Reason header of its final response (res_pjsip_rfc3326 adds
`Reason: Q.850;cause=N` to every response of 300 and above, N being the cause the channel
hung up with). omnicc's dialplan hangs up with NODE_FAILURE_CAUSE (34, "no circuit
available", 503) when this node could not serve: the FastAGI server failed or could not be
reached, nothing was dialled. Every final outcome of its own that is a 5xx uses another
cause (omnicc/outbound_call.py: 42, "switching equipment congestion", also 503), and a
called side's 34 after a Dial is passed on as 42 (dialplan/omnicc.conf). A `context:`
destination runs the admin's own dialplan, which omnicc does not control: its Dial()s
should do the same. So:

- no reply in time, or a 5xx without a Q.850 Reason (a node that is down or overloaded
  answers before any dialplan runs): the next node;
- a 5xx whose Q.850 cause is NODE_FAILURE_CAUSE: the next node;
- a 5xx with any other Q.850 cause, and every 3xx, 4xx and 6xx: final, relayed.
"""

from __future__ import annotations

import re

NODE_FAILURE_CAUSE = 34

_Q850_CAUSE = re.compile(r"^\s*Q\.850\s*;(?:.*?;)?\s*cause\s*=\s*(\d{1,3})\s*(?:;|$)",
                         re.IGNORECASE)


def q850_cause(reason: str | None) -> int | None:
    """The Q.850 cause of a Reason header's value (`Q.850;cause=42;text="..."`, possibly
    one of several comma-separated reasons), or None when it holds none."""
    if not reason:
        return None
    for value in _split_values(reason):
        found = _Q850_CAUSE.match(value)
        if found:
            return int(found.group(1))
    return None


def _split_values(header: str) -> list[str]:
    """The comma-separated values of a header, commas inside quotes kept."""
    values, current, quoted = [], [], False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            values.append("".join(current))
            current = []
        else:
            current.append(ch)
    values.append("".join(current))
    return values


def marked_final(reason: str | None) -> bool:
    """Whether a node's 5xx with this Reason header is a final outcome of its own (a Q.850
    cause other than NODE_FAILURE_CAUSE), not a node that could not serve."""
    cause = q850_cause(reason)
    return cause is not None and cause != NODE_FAILURE_CAUSE


def try_next_node(status: int, reason: str | None) -> bool:
    """After an Asterisk node's final reply `status` (with its Reason header, if any):
    whether the call goes to the next node."""
    return 500 <= status <= 599 and not marked_final(reason)
