"""omnicc/node_failover.py: which Asterisk replies send a call to the next node."""

from __future__ import annotations

import pytest

from omnicc.node_failover import NODE_FAILURE_CAUSE, marked_final, q850_cause, try_next_node
from omnicc.outbound_call import Q850_NO_CIRCUIT, Q850_TRUNKS_FAILED


@pytest.mark.parametrize(("reason", "cause"), [
    ("Q.850;cause=34", 34),
    ('Q.850;cause=42;text="switching equipment congestion"', 42),
    ("q.850 ; cause = 16", 16),
    ('SIP;cause=200;text="Call completed elsewhere", Q.850;cause=26', 26),
    ('SIP;cause=503;text="a, b", Q.850;cause=42', 42),
    ("Q.850;text=x;cause=21", 21),
    ("SIP;cause=503", None),
    ("Q.850;cause=", None),
    ("Q.850;cause=4200", None),
    ("Q.850;causes=42", None),
    ("", None),
    (None, None),
])
def test_the_q850_cause_of_a_reason_header(reason: str | None, cause: int | None) -> None:
    assert q850_cause(reason) == cause


@pytest.mark.parametrize(("status", "reason", "next_node"), [
    (503, "Q.850;cause=34", True),    # the dialplan could not ask its FastAGI server
    (503, None, True),                # before any dialplan: an overloaded node
    (500, "SIP;cause=500", True),
    (503, "Q.850;cause=42", False),   # every trunk failed or full: final
    (500, "Q.850;cause=127", False),  # a carrier's 400 passed on: final
    (502, "Q.850;cause=27", False),
    (486, "Q.850;cause=17", False),
    (404, None, False),
    (403, "Q.850;cause=21", False),
    (603, None, False),
])
def test_only_a_node_that_could_not_serve_sends_the_call_on(
    status: int, reason: str | None, next_node: bool
) -> None:
    assert try_next_node(status, reason) is next_node


def test_the_dialplans_causes_are_the_ones_the_proxy_reads() -> None:
    assert NODE_FAILURE_CAUSE == Q850_NO_CIRCUIT
    assert marked_final(f"Q.850;cause={Q850_TRUNKS_FAILED}")
    assert not marked_final(f"Q.850;cause={Q850_NO_CIRCUIT}")
