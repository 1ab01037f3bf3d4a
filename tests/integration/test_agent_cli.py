"""`omnicc agent login/pause/unpause/logout/show` against the real stack: the ACD's state
follows, and only an agent whose phone is registered through Kamailio can be READY."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnicc.keys import agent_contact

from .conftest import RunningStack, omnicc_cli
from .test_first_call import agent_online

pytestmark = pytest.mark.integration


def agent(stack: RunningStack, *args: str) -> tuple[int, str]:
    result = omnicc_cli(stack.directory, "agent", *args)
    return result.returncode, result.stdout + result.stderr


def test_agent_states_from_the_command_line(running_stack: RunningStack,
                                            sipp_dir: Path) -> None:
    # Whatever an earlier test left registered, as if its registration had expired.
    running_stack.redis().delete(agent_contact("default", "1002"))
    code, out = agent(running_stack, "login", "1002")
    assert code == 1 and "not_registered" in out  # no phone registered
    with agent_online(running_stack, sipp_dir, "1002"):
        assert agent(running_stack, "login", "1002") == (0, "agent 1002 of tenant default: "
                                                           "READY\n")
        assert agent(running_stack, "pause", "1002", "--reason", "lunch")[0] == 0
        assert "PAUSED (lunch)" in agent(running_stack, "show", "1002")[1]
        assert agent(running_stack, "unpause", "1002")[0] == 0
        assert "READY" in agent(running_stack, "show", "1002")[1]
    # The phone unregistered (Expires: 0): the ACD took the agent OFFLINE at once.
    assert "OFFLINE" in agent(running_stack, "show", "1002")[1]
    code, out = agent(running_stack, "logout", "1002")
    assert code == 1 and "not_logged_in" in out
