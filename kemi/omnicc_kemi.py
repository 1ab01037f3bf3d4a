"""omnicc's Kamailio routing, as a KEMI script for app_python3.

Reads like the kamailio.cfg it replaces: one route per kind of request. Decisions that
are pure logic (who sent this, which agent is that, is this token good) live in the omnicc
core; this file only translates them into KSR calls.

Kamailio loads it with: modparam("app_python3", "load", "/path/to/omnicc_kemi.py").
Environment: OMNICC_CONFIG names the omnicc.yaml; OMNICC_VAR the local stack's var/ (for
default secrets); OMNICC_REDIS_URL the Redis every node shares; OMNICC_PYTHONPATH (colon
separated) names site directories holding the omnicc package and its dependencies.
"""

import os
import re
import site
import time
import traceback

for _dir in filter(None, os.environ.get("OMNICC_PYTHONPATH", "").split(":")):
    site.addsitedir(_dir)

import KSR  # noqa: E402  (provided by app_python3)

from omnicc.agent_auth import ADMIT_LUA, AgentAuthenticator, AuthFailure  # noqa: E402
from omnicc.config import load_config  # noqa: E402
from omnicc.keys import agent_contact, agent_disabled, contact_withdrawn  # noqa: E402
from omnicc.lean_redis import (  # noqa: E402
    CONTACT_TOMBSTONE_MS,
    LeanRedisError,
    ReachabilityWriter,
    TrackedAdmission,
    encode_refresh,
    tombstone_value,
)
from omnicc.node_failover import marked_final  # noqa: E402
from omnicc.sip_auth import (  # noqa: E402
    bearer_challenge,
    contact_expires,
    contact_uri,
    digest_answers_with_qop,
    parse_authorization,
    path_header,
    registration_ttl,
)
from omnicc.sip_policy import Classified, Source, SourcePolicy  # noqa: E402
from omnicc.sip_security import (  # noqa: E402
    ALLOWED_METHODS,
    UNWRITTEN_SECONDS_MAX,
    UNWRITTEN_TABLE,
    WITHDRAWN_SECONDS,
    WITHDRAWN_TABLE,
    BanList,
    BanRecordError,
    EdgeGuard,
    ScannerMatcher,
)

# Headers only omnicc may set: stripped from everything that enters from outside.
INTERNAL_HEADERS = ("X-Omnicc-Tenant", "X-Omnicc-Trunk", "X-Omnicc-Agent")
DISPATCHER_SET = 1
DISPATCHER_ROUND_ROBIN = 4
ASTERISK_SILENCE_TIMEOUT_MS = 3000
REG_SAVE_NO_REPLY = 0x02  # save() flag: the script sends the reply (reg_send_reply)
AUTH_STALE_NONCE = -4  # pv_auth_check's result for a nonce past its lifetime
AUTH_NONCE_REUSED = -6  # ... for a nonce count seen before: a replay, or a retransmission
AUTH_CHALLENGE_QOP = 1  # auth_challenge() flag: qop=auth (nonce counts can be checked)
AUTH_CHALLENGE_STALE = 16  # auth_challenge() flag: stale=true
ASTERISK_RING_TIMEOUT_MS = 120000
LOOSE_ROUTE_PRELOADED = -3  # loose_route(): next hop taken from a preloaded route set
# Refreshes of published reachability, queued by the workers for the flusher (rtimer,
# kamailio.cfg) to write back; past REFRESH_QUEUE_MAX a worker sends its own.
REFRESH_QUEUE = "omnicc_refresh"
REFRESH_QUEUE_MAX = 50000
MQUEUE_FETCHED = 1  # mq_fetch(): an item was taken (-2: the queue is empty)
# What a trunk may call: omnicc.outbound.check_dialled_number's characters and length.
CALLED_NUMBER_RE = re.compile(r"\+?[0-9*#]{1,32}")


class NodeHtables:
    """The node's htables (kamailio.cfg.j2 declares them), for EdgeGuard."""

    def get(self, table, key):
        return KSR.htable.sht_get(table, key)

    def set_expiring(self, table, key, value, seconds):
        KSR.htable.sht_setxs(table, key, value, seconds)

    def increment(self, table, key):
        return KSR.htable.sht_inc(table, key)

    def set_expiry(self, table, key, seconds):
        KSR.htable.sht_setex(table, key, seconds)

    def remove(self, table, key):
        KSR.htable.sht_rm(table, key)


def lean_admission(url, lua, tables):
    """The lean, tracking client for a redis:// or unix:// URL; None (redis-py's, a round
    trip every request) for others."""
    try:
        return TrackedAdmission(
            url, lua, timeout=0.5, log=lambda message: KSR.warn(f"omnicc: {message}\n"),
            # An unregistration through any worker (or node) marked it, or the node's
            # flusher could not write a refresh of it: publish it again.
            recently_withdrawn=lambda key: (tables.get(WITHDRAWN_TABLE, key) is not None
                                            or tables.get(UNWRITTEN_TABLE, key) is not None),
            defer=queue_refresh)
    except ValueError:
        return None


def queue_refresh(key, value, ttl):
    """Hand a reachability refresh to the flusher; False (the worker sends it) when the
    queue is full. (Size, then add: a bound give or take a worker's item, not exact.)"""
    if KSR.mqueue.mq_size(REFRESH_QUEUE) >= REFRESH_QUEUE_MAX:
        return False
    item = encode_refresh(value, ttl, time.time(), time.monotonic())
    return KSR.mqueue.mq_add(REFRESH_QUEUE, key, item) > 0


def one_line_traceback():
    # One log line per failure, so a log search finds the whole of it.
    return traceback.format_exc().replace("\n", " | ")


def mod_init():
    return kamailio()


class kamailio:  # noqa: N801  (the class name app_python3 expects)
    def __init__(self):
        self.config = None
        self.policy = None
        self.auth = None
        self.guard = None
        self.scanners = None
        self.clustered = False
        self.node_uri = ""
        self.redis = None
        self.admission = None
        self.tables = None
        self.redis_url = ""
        self._acd = None
        self._writer = None  # the flusher's
        self._unsent = []  # refreshes the flusher could not send: tried again
        self._flush_failing = False

    def child_init(self, rank):
        # Each worker has its own interpreter: load the config and open Redis here.
        path = os.environ.get("OMNICC_CONFIG", "omnicc.yaml")
        try:
            self.config = load_config(path)
            self.policy = SourcePolicy(self.config)
            self.scanners = ScannerMatcher(self.config.security.scanner_user_agents)
            self.clustered = bool(self.config.kamailio_peers)
            services = self.config.services
            self.node_uri = f"sip:{services.listen}:{services.kamailio.port}"
            import redis

            url = os.environ.get("OMNICC_REDIS_URL", "redis://127.0.0.1:6379/0")
            self.redis_url = url
            # The per-request admission goes over a lean connection of its own (a quarter
            # of redis-py's CPU); everything rarer uses redis-py.
            self.tables = NodeHtables()
            self.admission = lean_admission(url, ADMIT_LUA, self.tables)
            client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
            self.auth = AgentAuthenticator.from_config(
                self.config, path, os.environ.get("OMNICC_VAR", "var"), client,
                admit_script=self.admission,
            )
            self.guard = EdgeGuard(self.tables, BanList(client, self.config.node),
                                   self.config.security)
            self.redis = client
        except Exception as exc:  # config, secrets, keys: the log must say which
            KSR.err(f"omnicc: cannot start with config {path}: {' '.join(str(exc).split())}\n")
            return -1
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
        source_ip = KSR.pv.get("$si")
        peer = self.policy.classify(source_ip, KSR.pv.geti("$sp"))
        if peer.source is Source.KAMAILIO:
            self.route_from_peer_node()
            return
        if peer.source is Source.UNTRUSTED and not self.screen_untrusted(source_ip):
            return
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return
        method = KSR.pv.get("$rm")
        if method not in ALLOWED_METHODS:
            self.method_not_allowed()
            return
        if KSR.sanity.sanity_check(17895, 7) < 0:
            KSR.err(f"omnicc: malformed request from {source_ip}\n")
            return
        if method == "OPTIONS" and KSR.is_myself_ruri() and KSR.pv.is_null("$rU"):
            KSR.sl.sl_send_reply(200, "Keepalive")
            return

        KSR.force_rport()
        if method == "REGISTER":
            # Answered here, statelessly, and never relayed: no dialog, no transaction to
            # find, and the Route and internal headers matter only to what is forwarded.
            self.route_register(peer)
            return
        if peer.source is not Source.ASTERISK:
            for name in INTERNAL_HEADERS:
                KSR.hdr.remove(name)
        if KSR.siputils.has_totag() > 0:
            self.route_within_dialog(peer)
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

        if peer.source is Source.ASTERISK:
            self.route_to_agent()
        elif peer.source is Source.TRUNK:
            self.route_to_asterisk(peer.tenant.name, trunk=peer.trunk.name)
        else:
            self.route_from_agent()

    def route_from_peer_node(self):
        """Another omnicc Kamailio: DMQ replication, or a call to an agent registered
        through this node (its Path), or a request within such a call."""
        if KSR.pv.get("$rm") == "KDMQ":
            KSR.dmq.handle_message()
            return
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return
        KSR.force_rport()
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return
        if KSR.siputils.has_totag() > 0:
            self.route_within_dialog(Classified(Source.KAMAILIO))
            return
        if KSR.tm.t_check_trans() == 0:
            return
        # The Route is this node's Path hop, preloaded by the peer's lookup (loose_route
        # gives -3 for a preloaded route set); the path module sets the next hop to the
        # address a NATed agent registered from.
        if not KSR.is_INVITE() or KSR.rr.loose_route() not in (1, LOOSE_ROUTE_PRELOADED):
            KSR.sl.sl_send_reply(403, "Not A Path-Routed Call")
            return
        KSR.dialog.dlg_manage()  # so the agent's in-dialog requests are recognised here
        KSR.rr.record_route()
        KSR.tm.t_on_reply("ksr_reply_from_agent")
        self.relay()

    def screen_untrusted(self, ip):
        """Bans, scanners, flood, size: False if the request must go no further. All in
        the node's own memory: a stranger costs no Redis round trip."""
        security = self.config.security
        if self.guard.is_banned(ip):
            return False  # dropped without a reply
        # Scanners name themselves in the User-Agent, and some still do in the From
        # display name after the User-Agent was changed.
        if self.scanners.matches(KSR.pv.get("$ua")) or self.scanners.matches(KSR.pv.get("$fn")):
            self.ban(ip, "scanner")
            return False
        if self.count(self.guard.count_request, ip, "flood"):
            return False
        if KSR.pv.geti("$ml") > security.max_message_bytes:
            KSR.sl.sl_send_reply(513, "Message Too Large")
            return False
        return True

    def ban(self, ip, reason):
        try:
            self.guard.ban(ip, reason)
        except BanRecordError:
            KSR.err(f"omnicc: ban of {ip} not recorded in Redis: {one_line_traceback()}\n")
        KSR.info(f"omnicc: banned {ip}: {reason}\n")

    def count(self, counter, ip, reason):
        """Count one event from ip; True if that banned it."""
        try:
            banned = counter(ip)
        except BanRecordError:
            KSR.err(f"omnicc: ban of {ip} not recorded in Redis: {one_line_traceback()}\n")
            banned = True
        if banned:
            KSR.info(f"omnicc: banned {ip}: {reason}\n")
        return banned

    # ------------------------------------------------------------------ routes
    def route_within_dialog(self, peer):
        # A request from an untrusted source that merely claims to be in a dialog (To tag,
        # Route header) is relayed only if this proxy set that dialog up: the classic
        # toll-fraud path goes no further.
        if peer.source is Source.UNTRUSTED and KSR.dialog.is_known_dlg() < 0:
            if not KSR.is_ACK():
                KSR.sl.sl_send_reply(481, "Call/Transaction Does Not Exist")
            return
        if KSR.rr.loose_route() > 0:
            if peer.source is Source.UNTRUSTED and KSR.nathelper.nat_uac_test(1) > 0:
                KSR.nathelper.fix_nated_contact()  # an agent behind NAT, mid-dialog
            self.relay()
            return
        if KSR.is_ACK():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return
        KSR.sl.sl_send_reply(404, "Not here")

    def route_register(self, peer):
        if peer.source is not Source.UNTRUSTED:
            KSR.sl.sl_send_reply(403, "Trusted Peers Do Not Register")
            return
        header = KSR.pv.get("$hdr(Authorization)") or ""
        if not header:  # half of all REGISTERs: the challenge needs nothing more
            self.authenticate("$tU", "$td", register=True, header=header)
            return
        # The Contact parsed here: Kamailio's pv transformation logs an error for every
        # Contact without header parameters, which is most of them.
        contact_header = (KSR.pv.get("$ct") or "").strip()
        ttl = registration_ttl(KSR.pv.get("$hdr(Expires)"), contact_expires(contact_header))
        leaving = contact_header == "*" or (contact_header and ttl == 0)
        # The ACD hears of a new binding in the same Redis round trip that checks the
        # agent's credentials are not revoked, so whoever sees the 200 OK sees the agent
        # reachable. (A REGISTER without Contact only asks for the bindings.)
        publish = (f"{self.config.node} {contact_uri(contact_header)}"
                   if contact_header and not leaving else "")
        identity = self.authenticate("$tU", "$td", register=True, header=header,
                                     publish_contact=publish, ttl=ttl)
        if identity is None:
            return
        # An agent behind NAT: register the address it came from, not the one it wrote.
        behind_nat = KSR.nathelper.nat_uac_test(19) > 0
        if behind_nat:
            KSR.nathelper.fix_nated_register()
        if self.clustered:
            # Other nodes reach this agent through this node (see kamailio.cfg: Path),
            # behind NAT at the address the REGISTER came from. Written here rather than
            # by the path module, whose Path gets this node's address only when a request
            # is forwarded; applied to the request itself, for save() reads what was
            # received.
            received = ((KSR.pv.get("$si"), KSR.pv.geti("$sp"), KSR.pv.get("$pr"))
                        if behind_nat else None)
            KSR.hdr.insert(path_header(self.node_uri, received))
            KSR.textopsx.msg_apply_changes()
        if KSR.registrar.save("location", REG_SAVE_NO_REPLY) < 0:
            if publish:
                self.delete_contact(self.mark_withdrawn(identity))
            KSR.sl.sl_reply_error()
            return
        if leaving:
            self.withdraw(identity)
        KSR.registrar.reg_send_reply()

    def withdraw(self, identity):
        """The agent unregistered: unreachable, and the ACD takes it OFFLINE now (a ringing
        reservation is withdrawn), not when matching next meets it — before the 200 OK."""
        # The key goes first, with its tombstone: a refresh the flusher writes back after
        # the ACD looked cannot bring it back.
        self.delete_contact(self.mark_withdrawn(identity))
        try:
            self.acd().unregister(identity.tenant.name, identity.extension)
        except Exception:
            KSR.err(f"omnicc: cannot tell the ACD of an unregistration: "
                    f"{one_line_traceback()}\n")

    def delete_contact(self, key):
        """Delete the reachability key and leave its tombstone (keys.contact_withdrawn):
        no refresh queued before now is written back after."""
        try:
            if self.admission is not None:
                # On the admission's connection: after any refresh this worker sent itself.
                self.admission.withdraw(key)
            else:
                pipe = self.redis.pipeline(transaction=True)
                pipe.set(contact_withdrawn(key), tombstone_value(time.time()),
                         px=CONTACT_TOMBSTONE_MS)
                pipe.delete(key)
                pipe.execute()
        except Exception:
            KSR.err(f"omnicc: cannot withdraw reachability: {one_line_traceback()}\n")

    def mark_withdrawn(self, identity):
        """Tell every worker (and node) the agent's reachability key is going: none may
        take its contact as published. Returns the key."""
        key = agent_contact(identity.tenant.name, identity.extension)
        self.tables.set_expiring(WITHDRAWN_TABLE, key, "1", WITHDRAWN_SECONDS)
        return key

    def route_to_agent(self):
        """A call from Asterisk to an agent: deliver to the agent's registered contact."""
        if self.agent_disabled(KSR.pv.get("$rd") or "", KSR.pv.get("$rU") or ""):
            KSR.sl.sl_send_reply(480, "Temporarily Unavailable")
            return
        KSR.dialog.dlg_manage()  # so the agent's in-dialog requests are recognised
        KSR.rr.record_route()
        KSR.tm.t_on_reply("ksr_reply_from_agent")
        rc = KSR.registrar.lookup("location")
        if rc < 0:
            # -1 no contact, -2 method not allowed, -3 internal error
            if rc in (-1, -3):
                KSR.sl.send_reply(480, "Temporarily Unavailable")
            else:
                self.method_not_allowed()
            return
        self.relay()

    def route_to_asterisk(self, tenant, *, trunk="", agent=""):
        """A call from a trusted peer or an agent: to an Asterisk node (dispatcher)."""
        if not KSR.is_INVITE():
            self.method_not_allowed()
            return
        if trunk and not CALLED_NUMBER_RE.fullmatch(KSR.pv.get("$rU") or ""):
            # A trunk's or PBX's DID becomes dialplan data: only a number goes in (the
            # inbound_route AGI checks it again).
            KSR.sl.sl_send_reply(484, "Address Incomplete")
            return
        if KSR.dispatcher.ds_select_dst(DISPATCHER_SET, DISPATCHER_ROUND_ROBIN) < 0:
            KSR.sl.sl_send_reply(503, "No Asterisk Node Available")
            return
        KSR.hdr.append(f"X-Omnicc-Tenant: {tenant}\r\n")
        if trunk:
            KSR.hdr.append(f"X-Omnicc-Trunk: {trunk}\r\n")
        if agent:
            KSR.hdr.append(f"X-Omnicc-Agent: {agent}\r\n")
        KSR.dialog.dlg_manage()
        KSR.rr.record_route()
        # Asterisk answers 100 Trying at once: a node silent for 3 s is down, try the next.
        KSR.tm.t_set_fr(ASTERISK_RING_TIMEOUT_MS, ASTERISK_SILENCE_TIMEOUT_MS)
        KSR.tm.t_on_failure("ksr_failure_next_asterisk")
        self.relay()

    def route_from_agent(self):
        identity = self.authenticate("$fU", "$fd")
        if identity is None:
            return
        if KSR.is_INVITE() and KSR.nathelper.nat_uac_test(19) > 0:
            KSR.nathelper.fix_nated_contact()
        self.route_to_asterisk(identity.tenant.name, agent=identity.extension)

    # ------------------------------------------------------------------ rtimer
    def ksr_flush_refreshes(self, msg, event=None):
        """The flusher (an rtimer process, kamailio.cfg): write back the refreshes the
        workers queued, in one round trip. With Redis unreachable they are tried again on
        the next runs until they are too old; one that is not written is marked in the
        node's `unwritten` htable for its TTL, so the agent's next REGISTER here publishes
        its contact with a round trip."""
        refreshes, self._unsent = self._unsent, []
        unwritten = []
        try:
            while (len(refreshes) < REFRESH_QUEUE_MAX
                   and KSR.mqueue.mq_fetch(REFRESH_QUEUE) == MQUEUE_FETCHED):
                refreshes.append((KSR.mqueue.mqk_get(REFRESH_QUEUE),
                                  KSR.mqueue.mqv_get(REFRESH_QUEUE)))
            if not refreshes:
                return 1
            if self._writer is None:
                self._writer = ReachabilityWriter(
                    self.redis_url, timeout=0.5,
                    log=lambda message: KSR.warn(f"omnicc: {message}\n"))
            unwritten = self._writer.write(refreshes, time.monotonic())
            if self._flush_failing:
                KSR.info("omnicc: reachability refreshes written again\n")
                self._flush_failing = False
        except LeanRedisError as exc:
            if not self._flush_failing:  # once, not every 20 ms
                KSR.err(f"omnicc: reachability refreshes not written, kept to try again: "
                        f"{exc}\n")
                self._flush_failing = True
            self._unsent = refreshes  # the writer drops those that grow too old
        except Exception:
            KSR.err(f"omnicc: exception in the refresh flusher: {one_line_traceback()}\n")
            unwritten = [(key, UNWRITTEN_SECONDS_MAX) for key, _ in refreshes]
        for key, seconds in unwritten:
            self.tables.set_expiring(UNWRITTEN_TABLE, key, "1",
                                     min(seconds, UNWRITTEN_SECONDS_MAX))
        return 1

    # ------------------------------------------------------------------ failure route
    def ksr_failure_next_asterisk(self, msg):
        try:
            if KSR.tm.t_is_canceled() > 0:
                return 1
            # A node that did not answer, or answered 5xx because it could not serve: try
            # the next one. A 5xx whose Reason says it is the node's final outcome (every
            # trunk of an outbound call failed) is relayed: the next node would dial the
            # same carriers again (omnicc/node_failover.py).
            if (KSR.tm.t_check_status("5[0-9][0-9]") > 0
                    and not marked_final(KSR.pv.get("$T_rpl($hdr(Reason))"))) or (
                KSR.tm.t_branch_timeout() > 0 and KSR.tm.t_any_replied() < 0
            ):
                if KSR.dispatcher.ds_next_dst() > 0:
                    KSR.tm.t_on_failure("ksr_failure_next_asterisk")
                    self.relay()
        except Exception:
            KSR.err(f"omnicc: exception in failure route: {one_line_traceback()}\n")
        return 1

    # ------------------------------------------------------------------ helpers
    def authenticate(self, user_pv, domain_pv, *, register=False, header=None,
                     publish_contact="", ttl=0):
        """Authenticate an agent (bearer token or digest), then admit it (not disabled, its
        token not revoked; for a REGISTER its reachability published). `header`: the
        REGISTER's Authorization, when the caller read it already. Returns its identity,
        or None when a challenge or refusal has been sent."""
        domain = KSR.pv.get(domain_pv) or ""
        user = KSR.pv.get(user_pv) or ""
        tenant = self.config.tenant_by_domain(domain.lower())
        if tenant is None:
            KSR.sl.sl_send_reply(403, "Forbidden")
            return None
        if register:
            if header is None:
                header = KSR.pv.get("$hdr(Authorization)")
        else:
            header = (KSR.pv.get("$hdr(Proxy-Authorization)")
                      or KSR.pv.get("$hdr(Authorization)"))
        credentials = parse_authorization(header)
        now = time.time()
        try:
            if credentials.scheme == "bearer":
                identity = self.auth.check_bearer(credentials.token, tenant, user, now)
            elif credentials.scheme == "digest":
                if self.config.auth.digest.require_qop and not digest_answers_with_qop(header):
                    raise AuthFailure("digest: no qop=auth (its answer could be replayed)")
                # $aU: the whole digest username; $au would cut "EXPIRY:EXT" to EXT.
                auth_user = KSR.pv.get("$aU") or ""
                password = self.auth.digest_password(tenant, user, auth_user, now)
                # checks=0: the identity (auth user vs AOR) is checked by digest_password.
                rc = KSR.auth.pv_auth_check(tenant.domain, password, 0, 0)
                if rc == AUTH_STALE_NONCE:
                    # A right answer to an old challenge: challenge again, count nothing.
                    raise AuthFailure("digest: stale nonce", counts=False, stale=True)
                if rc == AUTH_NONCE_REUSED:
                    # Refused, but not counted: a phone's UDP retransmission looks the same.
                    raise AuthFailure("digest: nonce count reused (replay?)", counts=False)
                if rc < 0:
                    raise AuthFailure("digest")
                identity = self.auth.identity(tenant, user)
            elif credentials.scheme == "malformed":
                raise AuthFailure("malformed")
            else:
                self.challenge(tenant.domain, register)
                return None
            self.auth.admit(identity, publish_contact=publish_contact, ttl=ttl)
        except AuthFailure as failure:
            self.auth_failed(failure.reason, counts=failure.counts)
            self.challenge(tenant.domain, register, stale=failure.stale)
            return None
        if not register:
            # Credentials end here: never forwarded to Asterisk or anyone else. (A REGISTER
            # is never forwarded at all.)
            KSR.hdr.remove("Authorization")
            KSR.hdr.remove("Proxy-Authorization")
        return identity

    def challenge(self, realm, register, stale=False):
        KSR.hdr.append_to_reply(bearer_challenge(realm, proxy=not register))
        KSR.auth.auth_challenge(realm, AUTH_CHALLENGE_QOP | (AUTH_CHALLENGE_STALE if stale else 0))

    def auth_failed(self, reason, counts=True):
        ip = KSR.pv.get("$si")
        KSR.info(f"omnicc: authentication failed from {ip}: {reason}\n")
        if counts:
            self.count(self.guard.count_auth_failure, ip, "auth-failures")

    def acd(self):
        if self._acd is None:
            from omnicc.acd import AcdSync

            self._acd = AcdSync(self.redis, self.config.node)
        return self._acd

    def agent_disabled(self, domain, user):
        tenant = self.config.tenant_by_domain(domain.lower())
        if tenant is None:
            return False
        try:
            return bool(self.redis.exists(agent_disabled(tenant.name, user)))
        except Exception:
            KSR.err(f"omnicc: cannot check agent state: {one_line_traceback()}\n")
            return False

    def method_not_allowed(self):
        # RFC 3261 21.4.6: a 405 lists the methods that are allowed.
        KSR.hdr.append_to_reply("Allow: " + ", ".join(sorted(ALLOWED_METHODS)) + "\r\n")
        KSR.sl.sl_send_reply(405, "Method Not Allowed")

    def relay(self):
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    def ksr_reply_route(self, msg):
        return 1

    def ksr_reply_from_agent(self, msg):
        """An agent's reply to a call: behind NAT, its Contact is the address it came from,
        so Asterisk's ACK and BYE reach it."""
        try:
            if KSR.nathelper.nat_uac_test(1) > 0:
                KSR.nathelper.fix_nated_contact()
        except Exception:
            KSR.err(f"omnicc: exception in reply route: {one_line_traceback()}\n")
        return 1

    def ksr_onsend_route(self, msg):
        return 1
