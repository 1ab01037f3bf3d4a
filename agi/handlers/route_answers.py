"""How routing handlers answer the dialplan: the channel variables of dialplan/omnicc.conf.
Shared by inbound_route, agent_call and queue_call so all speak to Asterisk the same way.

A queue destination also carries OMNICC_QUEUE_MOH (the queue's music-on-hold class, empty
for Asterisk's default) and, when the route gives one, OMNICC_PRIORITY. An IVR carries
OMNICC_IVR, OMNICC_IVR_PROMPT, OMNICC_IVR_DIGITS and OMNICC_IVR_TIMEOUT (what Read() is
given: all from the config), a context destination OMNICC_CONTEXT and
OMNICC_CONTEXT_EXTEN (a context the config declares). An external: or pbx: destination
carries OMNICC_FORWARD, the destination as the config names it; the dialplan hands it to
forward_call (agi/handlers/forward_call.py), which sends the call out again."""

from __future__ import annotations

from agi.protocol import AGISession
from omnicc.routing import InboundDecision

# Hang-up cause for a number omnicc has no route for: Asterisk answers 404 Not Found.
Q850_UNALLOCATED_NUMBER = 1
# omnicc could not decide (Redis failed): 503, so a carrier tries its next route.
Q850_NO_CIRCUIT = 34


async def answer_unrouted(session: AGISession, reason: str,
                          cause: int = Q850_UNALLOCATED_NUMBER) -> None:
    """OMNICC_STATUS=ERROR: the dialplan hangs up with `cause`."""
    # One line: a channel variable cannot hold a line break.
    await session.set_variable("OMNICC_ERROR", " ".join(reason.split()))
    await session.set_variable("OMNICC_CAUSE", str(cause))
    await session.set_variable("OMNICC_STATUS", "ERROR")


async def answer_decision(session: AGISession, decision: InboundDecision) -> None:
    """OMNICC_STATUS=OK with where the call goes (and, for an agent, how to dial it)."""
    await session.set_variable("OMNICC_DEST", decision.destination)
    if decision.agent:
        await session.set_variable("OMNICC_AGENT", decision.agent)
        await session.set_variable("OMNICC_DIAL", decision.dial)
    if decision.queue:
        await session.set_variable("OMNICC_QUEUE", decision.queue)
        # Always set: a failover from a queue with its own class to one without must not
        # keep the first queue's music.
        await session.set_variable("OMNICC_QUEUE_MOH", decision.moh_class)
        if decision.priority is not None:
            await session.set_variable("OMNICC_PRIORITY", str(decision.priority))
    if decision.ivr:
        await session.set_variable("OMNICC_IVR", decision.ivr)
        await session.set_variable("OMNICC_IVR_PROMPT", decision.ivr_prompt)
        await session.set_variable("OMNICC_IVR_DIGITS", str(decision.ivr_max_digits))
        await session.set_variable("OMNICC_IVR_TIMEOUT", str(decision.ivr_timeout))
        # A new menu starts at its first playing.
        await session.set_variable("OMNICC_IVR_ATTEMPT", "1")
    if decision.context:
        await session.set_variable("OMNICC_CONTEXT", decision.context)
        await session.set_variable("OMNICC_CONTEXT_EXTEN", decision.context_exten)
    if decision.forward:
        await session.set_variable("OMNICC_FORWARD", decision.forward)
    await session.set_variable("OMNICC_STATUS", "OK")
