"""omnicc's Kamailio routing, as a KEMI script for app_python3.

Reads like the kamailio.cfg it replaces: one route per kind of request. Decisions that
are pure logic (who sent this, which agent is that) live in the omnicc core; this file
only translates them into KSR calls.

Kamailio loads it with: modparam("app_python3", "load", "/path/to/omnicc_kemi.py").
Environment: OMNICC_CONFIG names the omnicc.yaml; OMNICC_PYTHONPATH (colon separated)
names site directories holding the omnicc package and its dependencies.
"""

import os
import site
import traceback

for _dir in filter(None, os.environ.get("OMNICC_PYTHONPATH", "").split(":")):
    site.addsitedir(_dir)

import KSR  # noqa: E402  (provided by app_python3)

from omnicc.config import ConfigError, load_config  # noqa: E402
from omnicc.sip_policy import Source, SourcePolicy, agent_password  # noqa: E402

# Headers only omnicc may set: stripped from everything that enters from outside.
INTERNAL_HEADERS = ("X-Omnicc-Tenant", "X-Omnicc-Trunk")
DISPATCHER_SET = 1
DISPATCHER_ROUND_ROBIN = 4


def one_line_traceback():
    # One log line per failure, so a log search finds the whole of it.
    return traceback.format_exc().replace("\n", " | ")


def mod_init():
    return kamailio()


class kamailio:  # noqa: N801  (the class name app_python3 expects)
    def __init__(self):
        self.config = None
        self.policy = None

    def child_init(self, rank):
        # Each worker has its own interpreter: load the config here, per process.
        path = os.environ.get("OMNICC_CONFIG", "omnicc.yaml")
        try:
            self.config = load_config(path)
        except ConfigError as exc:
            KSR.err(f"omnicc: cannot load config {path}:\n{exc}\n")
            return -1
        self.policy = SourcePolicy(self.config)
        return 0

    # ------------------------------------------------------------------ request route
    def ksr_request_route(self, msg):
        try:
            self.route_request()
        except Exception:
            # Never leave a request unanswered: log, reply 500, keep the worker serving.
            KSR.err(f"omnicc: exception in request route: {one_line_traceback()}\n")
            if not KSR.is_ACK():
                KSR.sl.sl_send_reply(500, "Server Internal Error")
        return 1

    def route_request(self):
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return
        if KSR.sanity.sanity_check(17895, 7) < 0:
            KSR.err("omnicc: malformed request from {}\n".format(KSR.pv.get("$si")))
            return
        if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.pv.is_null("$rU"):
            KSR.sl.sl_send_reply(200, "Keepalive")
            return

        KSR.force_rport()
        if KSR.siputils.has_totag() > 0:
            self.route_within_dialog()
            return
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return
        # 0: a retransmission tm has absorbed (it resent the last reply). A native
        # kamailio.cfg stops there by itself; a KEMI script must return, or the copy would
        # be authenticated and routed a second time.
        if KSR.tm.t_check_trans() == 0:
            return
        # An initial request is routed by omnicc, never by Route headers it brought.
        KSR.hdr.remove("Route")

        peer = self.policy.classify(KSR.pv.get("$si"), KSR.pv.geti("$sp"))
        if peer.source is not Source.ASTERISK:
            for name in INTERNAL_HEADERS:
                KSR.hdr.remove(name)

        if KSR.is_REGISTER():
            self.route_register()
        elif peer.source is Source.ASTERISK:
            self.route_to_agent()
        elif peer.source is Source.TRUNK:
            self.route_to_asterisk(peer.tenant.name, peer.trunk.name)
        else:
            self.route_from_agent()

    # ------------------------------------------------------------------ routes
    def route_within_dialog(self):
        if KSR.rr.loose_route() > 0:
            self.relay()
            return
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return
        KSR.sl.sl_send_reply(404, "Not here")

    def route_register(self):
        tenant = self.authenticate("$tU", "$td")
        if tenant is None:
            return
        if KSR.registrar.save("location", 0) < 0:
            KSR.sl.sl_reply_error()

    def route_to_agent(self):
        """A call from Asterisk to an agent: deliver to the agent's registered contact."""
        KSR.rr.record_route()
        rc = KSR.registrar.lookup("location")
        if rc < 0:
            # -1 no contact, -2 method not allowed, -3 internal error
            if rc in (-1, -3):
                KSR.sl.send_reply(480, "Temporarily Unavailable")
            else:
                KSR.sl.send_reply(405, "Method Not Allowed")
            return
        self.relay()

    def route_to_asterisk(self, tenant, trunk):
        """A call from a trusted peer: to an Asterisk node, chosen by the dispatcher."""
        if not KSR.is_INVITE():
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return
        if KSR.dispatcher.ds_select_dst(DISPATCHER_SET, DISPATCHER_ROUND_ROBIN) < 0:
            KSR.sl.sl_send_reply(503, "No Asterisk Node Available")
            return
        KSR.hdr.append(f"X-Omnicc-Tenant: {tenant}\r\n")
        KSR.hdr.append(f"X-Omnicc-Trunk: {trunk}\r\n")
        KSR.rr.record_route()
        KSR.tm.t_on_failure("ksr_failure_next_asterisk")
        self.relay()

    def route_from_agent(self):
        tenant = self.authenticate("$fU", "$fd")
        if tenant is None:
            return
        # Calls placed by agents are the subject of later work (outbound routes).
        KSR.sl.sl_send_reply(403, "Calls From Agents Not Enabled")

    # ------------------------------------------------------------------ failure route
    def ksr_failure_next_asterisk(self, msg):
        try:
            if KSR.tm.t_is_canceled() > 0:
                return 1
            # A node that answered 5xx or did not answer: try the next one.
            if KSR.tm.t_check_status("5[0-9][0-9]") > 0 or (
                KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_any_replied() < 0
            ):
                if KSR.dispatcher.ds_next_dst() > 0:
                    KSR.tm.t_on_failure("ksr_failure_next_asterisk")
                    self.relay()
        except Exception:
            KSR.err(f"omnicc: exception in failure route: {one_line_traceback()}\n")
        return 1

    # ------------------------------------------------------------------ helpers
    def authenticate(self, user_pv, domain_pv):
        """Digest-authenticate an agent; on failure the challenge or error is already sent."""
        domain = KSR.pv.get(domain_pv) or ""
        user = KSR.pv.get(user_pv) or ""
        tenant, password = agent_password(self.config, domain, user)
        realm = tenant.domain if tenant else domain
        if tenant is None:
            KSR.sl.sl_send_reply(403, "Forbidden")
            return None
        rc = KSR.auth.pv_auth_check(realm, password, 0, 1)
        if rc < 0:
            KSR.auth.auth_challenge(realm, 0)
            return None
        KSR.auth.consume_credentials()
        return tenant

    def relay(self):
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    def ksr_reply_route(self, msg):
        return 1

    def ksr_onsend_route(self, msg):
        return 1
