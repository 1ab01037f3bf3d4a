"""Run one sipvicious tool (svmap, svwar, svcrack) from a chosen loopback address, with
its own User-Agent or a chosen one.

    python sipvicious_tool.py TOOL SOURCE_IP USER_AGENT|default [tool options...]

sipvicious 0.3.8 has no option for the User-Agent ("friendly-scanner" is a default of
sipvicious.libs.svhelper.makeRequest), and svwar and svcrack accept -b but never pass it on
(their main() builds the scanner without bindingip). Both are set here before the tool's
own main() runs; everything else is the unchanged tool.
"""

import functools
import importlib
import sys

from sipvicious.libs import svhelper

SCANNER_CLASSES = {"svmap": "DrinkOrSip", "svwar": "TakeASip", "svcrack": "ASipOfRedWine"}
TOOL_DEFAULT_USER_AGENT = "friendly-scanner"


def main() -> None:
    tool, source_ip, user_agent, *tool_args = sys.argv[1:]
    module = importlib.import_module(f"sipvicious.{tool}")
    if user_agent != "default":
        defaults = list(svhelper.makeRequest.__defaults__)
        defaults[defaults.index(TOOL_DEFAULT_USER_AGENT)] = user_agent
        svhelper.makeRequest.__defaults__ = tuple(defaults)
    scanner = getattr(module, SCANNER_CLASSES[tool])
    scanner.__init__ = functools.partialmethod(scanner.__init__, bindingip=source_ip)
    sys.argv = [f"sipvicious_{tool}", *tool_args]
    module.main()


if __name__ == "__main__":
    main()
