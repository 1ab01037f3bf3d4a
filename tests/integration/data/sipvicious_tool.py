"""Run one sipvicious tool (svmap, svwar or svcrack, version 0.3.8) from a chosen address.

    python sipvicious_tool.py TOOL --source IP [--user-agent UA] [--digest-challenge]
                              [--expires N] -- TOOL_OPTIONS...

The tool's own main() runs with TOOL_OPTIONS; only these settings are changed:

--source IP         svmap honours -b, but svwar and svcrack accept -b and never pass it on
                    (their main() builds the scanner without bindingip), so they would all
                    send from 127.0.0.1. Every tool is bound to IP here.
--user-agent UA     the tools have no option for it: "friendly-scanner" is a default
                    argument of sipvicious.libs.svhelper.makeRequest, replaced here.
--digest-challenge  svcrack as shipped cannot answer omnicc's challenge: it reads only the
                    first WWW-/Proxy-Authenticate header, and omnicc sends the RFC 8898
                    Bearer one first (no nonce: svcrack never tries a password); and for a
                    challenge without qop it computes an RFC 2069 response but labels it
                    qop=auth, so even the right password fails. This makes svcrack answer
                    the Digest challenge correctly, as an attacker who fixed it would.
--expires N         an Expires header in every request; with 0, a REGISTER that succeeds
                    binds no contact (the control run that is allowed to find a password).
"""

import argparse
import functools
import importlib
import re
import sys

from sipvicious.libs import svhelper

SCANNER_CLASSES = {"svmap": "DrinkOrSip", "svwar": "TakeASip", "svcrack": "ASipOfRedWine"}
TOOL_USER_AGENT = "friendly-scanner"
TOOL_DIGEST_RESPONSE = svhelper.challengeResponse
DIGEST_CHALLENGE = re.compile(r"\r\n(?:www|proxy)-authenticate: *(digest .+?)\r\n", re.I)


def digest_challenge(packet: str) -> str | None:
    found = DIGEST_CHALLENGE.search(packet)
    return found.group(1) if found else None


def digest_response(auth: dict, method: str, uri: str) -> str:
    response = TOOL_DIGEST_RESPONSE(auth, method, uri)
    return response.replace(",qop=auth", "") if auth["qop"] is None else response


def bind_to(scanner: type, source_ip: str) -> None:
    tool_init = scanner.__init__

    @functools.wraps(tool_init)
    def init_bound(self, *args, **kwargs):
        kwargs["bindingip"] = source_ip
        tool_init(self, *args, **kwargs)

    scanner.__init__ = init_bound


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=sorted(SCANNER_CLASSES))
    parser.add_argument("--source", required=True)
    parser.add_argument("--user-agent")
    parser.add_argument("--digest-challenge", action="store_true")
    parser.add_argument("--expires", type=int)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])

    module = importlib.import_module(f"sipvicious.{args.tool}")
    bind_to(getattr(module, SCANNER_CLASSES[args.tool]), args.source)
    if args.user_agent:
        defaults = list(svhelper.makeRequest.__defaults__)
        defaults[defaults.index(TOOL_USER_AGENT)] = args.user_agent
        svhelper.makeRequest.__defaults__ = tuple(defaults)
    if args.digest_challenge:
        module.getAuthHeader = digest_challenge
        svhelper.challengeResponse = digest_response
    if args.expires is not None:
        module.makeRequest = functools.partial(
            svhelper.makeRequest, additional_headers=[("Expires", str(args.expires))])
    sys.argv = [f"sipvicious_{args.tool}", *argv[split + 1:]]
    module.main()


if __name__ == "__main__":
    main()
