"""A soak of the ACD: OS processes (each a node, as FastAGI servers are), each with many
coroutines — agents that pause, log out, lose their registration; callers that queue, wait
event-driven, ring agents, answer (every ringall agent at once), reject, let leases run
out, abandon, fail over and hang up — against one Redis, with the real clock (Redis TIME).

Afterwards the whole event stream is replayed (acd_checks.EventReplay) and the final Redis
state checked: no agent ever held two calls, no call vanished, the counters reconcile with
the stream and with what the processes saw.

    python -m tests.integration.acd_load --seconds 60 [--processes 4 --agents 25]

starts its own redis-server and prints the report (the suite runs it for
OMNICC_ACD_SOAK_SECONDS, 15 s by default: tests/integration/test_acd_concurrency.py).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis

from omnicc import keys
from omnicc.acd import AcdStore, NoAnswerOutcome, Offer, QueueSettings, Strategy
from omnicc.agent_state import Refusal
from tests.integration.acd_checks import (
    EventReplay,
    read_all_events,
    redis_problems,
    replay_matches_redis,
)

TENANT = "soak"
RESERVATION_LEASE_MS = 800
CALL_LEASE_MS = 1_500
QUEUES = {
    "q1": QueueSettings(strategy=Strategy.LONGEST_IDLE, wrapup_ms=50,
                        reservation_lease_ms=RESERVATION_LEASE_MS, call_lease_ms=CALL_LEASE_MS,
                        service_level_ms=300),
    "q2": QueueSettings(strategy=Strategy.FEWEST_CALLS, wrapup_ms=0,
                        reservation_lease_ms=RESERVATION_LEASE_MS, call_lease_ms=CALL_LEASE_MS,
                        auto_pause_reason="missed a call", max_waiting=40),
    "q3": QueueSettings(strategy=Strategy.RINGALL, wrapup_ms=30,
                        reservation_lease_ms=RESERVATION_LEASE_MS, call_lease_ms=CALL_LEASE_MS),
    "q4": QueueSettings(strategy=Strategy.ROUND_ROBIN_MEMORY, wrapup_ms=20,
                        reservation_lease_ms=RESERVATION_LEASE_MS, call_lease_ms=CALL_LEASE_MS),
    "q5": QueueSettings(strategy=Strategy.SKILLS_WEIGHTED, wrapup_ms=40,
                        reservation_lease_ms=RESERVATION_LEASE_MS, call_lease_ms=CALL_LEASE_MS),
}
QUEUE_NAMES = sorted(QUEUES)


def node_name(process: int) -> str:
    return f"soak-p{process}"


def extension(process: int, index: int) -> str:
    return f"2{process}{index:03d}"


def queues_of(process: int, index: int) -> list[str]:
    """Every agent in one queue, every other one in two: so the queues share agents, and
    agents of all processes serve each queue."""
    first = (process + index) % len(QUEUE_NAMES)
    names = [QUEUE_NAMES[first]]
    if index % 2 == 0:
        names.append(QUEUE_NAMES[(first + 1) % len(QUEUE_NAMES)])
    return names


@dataclass
class Tally:
    """What one process saw; the parent checks it against the stream."""

    enqueued: int = 0
    overflowed: int = 0
    answered: int = 0
    answer_refused: int = 0
    ringall_races: int = 0  # answers sent at once by every agent a ringall call rang
    ringall_double_wins: int = 0
    hangups: int = 0
    abandoned: int = 0
    failed_over: int = 0
    no_answers: int = 0
    leases_left_to_expire: int = 0
    sessions_died: int = 0
    nodes_died_on_call: int = 0  # connected calls whose node stopped vouching mid-talk
    talks_outlived_lease: int = 0  # the hangup came after the lease ran out (a stall)
    agent_actions: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Tally) -> None:
        for name in ("enqueued", "overflowed", "answered", "answer_refused", "ringall_races",
                     "ringall_double_wins", "hangups", "abandoned", "failed_over",
                     "no_answers", "leases_left_to_expire", "sessions_died",
                     "nodes_died_on_call", "talks_outlived_lease"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.agent_actions.update(other.agent_actions)


async def _agent(store: AcdStore, ext: str, deadline: float, rng: random.Random,
                 tally: Tally) -> None:
    await store.register(TENANT, ext, f"sip:{ext}@192.0.2.9", 3600)
    await store.login(TENANT, ext)
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        roll = rng.random()
        if roll < 0.10:
            action = "pause"
            await store.pause(TENANT, ext, rng.choice(["break", "lunch", "training"]))
        elif roll < 0.13:
            action = "logout"
            await store.logout(TENANT, ext)
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            await store.login(TENANT, ext)
        elif roll < 0.15:
            action = "unregister"
            await store.unregister(TENANT, ext)
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            await store.register(TENANT, ext, f"sip:{ext}@192.0.2.9", 3600)
            await store.login(TENANT, ext)
        else:
            action = "unpause"  # also ends an auto-pause; refused when not paused
            await store.unpause(TENANT, ext)
        tally.agent_actions[action] += 1


async def _ring(store: AcdStore, call: str, offers: list[Offer], rng: random.Random,
                tally: Tally, mortal: bool = False) -> str:
    """The dialplan dials the reserved agents; returns "answered", "gone" or "waiting".
    `mortal`: the call is held by a node that nobody renews connected calls for; it may
    die in the middle of a talk."""
    await asyncio.sleep(rng.uniform(0, 0.15))
    roll = rng.random()
    if roll < 0.75:
        answers = await asyncio.gather(*(
            store.answer(TENANT, call, o.agent, lease_until_ms=o.lease_until_ms)
            for o in offers))
        wins = sum(a.ok for a in answers)
        if len(offers) > 1:
            tally.ringall_races += 1
            tally.ringall_double_wins += wins > 1
        tally.answer_refused += len(answers) - wins
        if wins:
            tally.answered += wins
            if mortal and rng.random() < 0.3:
                # The node dies during the talk: nobody hangs up or renews; the call's
                # lease runs out and a tick ends it.
                tally.nodes_died_on_call += 1
                return "gone"
            await asyncio.sleep(rng.uniform(0.02, 0.3))  # talk
            ended = await store.hangup(TENANT, call, rng.choice(["caller", "agent"]))
            if ended.ok:
                tally.hangups += 1
            else:
                # The process stalled past the lease (a loaded machine): to the ACD its
                # node was dead, and the call ended by its lease.
                assert ended.code == Refusal.CALL_OVER, ended
                tally.talks_outlived_lease += 1
            return "answered"
        return "waiting"
    if roll < 0.78:
        # The session holding the caller dies (its FastAGI server killed): nobody answers,
        # renews or reports; the reservation's lease, then the call's, runs out.
        tally.sessions_died += 1
        return "gone"
    if roll < 0.87:
        for o in offers:
            outcome = rng.choice(list(NoAnswerOutcome))
            result = await store.no_answer(TENANT, call, o.agent, outcome,
                                           lease_until_ms=o.lease_until_ms)
            tally.no_answers += result.ok
        return "waiting"
    if roll < 0.92:
        # Awaited before the +=, which would otherwise read the count before the await
        # and lose the increments of other coroutines made meanwhile.
        abandoned = await store.abandon(TENANT, call, "caller_hangup")
        tally.abandoned += abandoned.ok
        return "gone"
    # Nobody reports the ring: the reservation's lease runs out and the call waits again.
    # The session lives on, and renews its call's lease meanwhile.
    tally.leases_left_to_expire += 1
    until = time.monotonic() + RESERVATION_LEASE_MS / 1000 + 0.05
    while time.monotonic() < until:
        await asyncio.sleep(min(0.3, max(0.0, until - time.monotonic())))
        await store.renew_call_lease(TENANT, call)
    return "waiting"


async def _caller(main_store: AcdStore, mortal_store: AcdStore, name: str, deadline: float,
                  rng: random.Random, tally: Tally) -> None:
    number = 0
    while time.monotonic() < deadline:
        call = f"{name}-{number}"
        number += 1
        # Most calls are held by the process's node, whose ticker renews its connected
        # calls; some by a node nobody renews connected calls for (it may die mid-talk).
        mortal = rng.random() < 0.15
        store = mortal_store if mortal else main_store
        result = await store.enqueue(TENANT, call, rng.choice(QUEUE_NAMES),
                                     caller=f"+3460{rng.randrange(10**6):06d}", did="900100",
                                     priority=rng.choice([0, 0, 0, 1, 2]))
        if not result.ok:
            assert result.code in (Refusal.QUEUE_FULL, Refusal.NO_AGENTS), result
            tally.overflowed += 1
            await asyncio.sleep(0.05)
            continue
        tally.enqueued += 1
        max_wait = rng.uniform(0.5, 3.0)
        patience = rng.uniform(0.3, 6.0)  # below max_wait: the caller hangs up first
        started = time.monotonic()
        offers = list(result.offers)
        while True:
            if offers:
                outcome = await _ring(store, call, offers, rng, tally, mortal)
                if outcome != "waiting":
                    break
            renewed = await store.renew_call_lease(TENANT, call)
            if renewed.code == Refusal.CALL_OVER:
                break
            waited = time.monotonic() - started
            if waited > patience:
                abandoned = await store.abandon(TENANT, call, "caller_hangup")
                if abandoned.ok:
                    tally.abandoned += 1
                    break
            elif waited > max_wait:
                failed = await store.fail_over(TENANT, call, "max_wait")
                if failed.ok:
                    tally.failed_over += 1
                    break
            offers = await store.wait_for_offer(TENANT, call, CALL_LEASE_MS / 3000)


async def _ticker(store: AcdStore, stop: asyncio.Event) -> None:
    """What the process's FastAGI server does: tick, and renew its connected calls."""
    while not stop.is_set():
        await store.tick(TENANT)
        await store.renew_connected_calls(TENANT)
        await asyncio.sleep(0.2)


async def _process_main(url: str, process: int, agents: int, callers: int,
                        seconds: float, seed: int) -> Tally:
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=30,
                                                    decode_responses=True)
    client = aioredis.Redis.from_pool(pool)
    store = AcdStore(client, node_name(process))
    mortal = AcdStore(client, node_name(process) + "-mortal")
    rng = random.Random(seed)
    tally = Tally()
    deadline = time.monotonic() + seconds
    stop_ticking = asyncio.Event()
    ticker = asyncio.create_task(_ticker(store, stop_ticking))
    try:
        await asyncio.gather(
            *(_agent(store, extension(process, i), deadline, random.Random(rng.random()), tally)
              for i in range(agents)),
            *(_caller(store, mortal, f"p{process}c{i}", deadline, random.Random(rng.random()),
                      tally) for i in range(callers)),
        )
    finally:
        stop_ticking.set()
        await ticker
        await store.close()
        await mortal.close()
        await client.aclose()
    return tally


def run_process(url: str, process: int, agents: int, callers: int, seconds: float,
                seed: int) -> Tally:
    """One OS process of the soak (the entry point multiprocessing spawns)."""
    return asyncio.run(_process_main(url, process, agents, callers, seconds, seed))


@dataclass
class SoakReport:
    seconds: float
    processes: int
    agents: int
    tally: Tally
    events: int
    event_counts: Counter[str]
    problems: list[str]

    def summary(self) -> str:
        t = self.tally
        return (
            f"{self.processes} processes, {self.agents} agents, {self.seconds:.0f} s: "
            f"{t.enqueued} calls queued ({t.enqueued / self.seconds:.0f}/s), "
            f"{t.answered} answered, {t.abandoned} abandoned, {t.failed_over} failed over "
            f"by max wait, {self.event_counts['call_failed_over'] - t.failed_over} by lease, "
            f"{t.overflowed} overflowed; {self.event_counts['call_reserved']} reservations, "
            f"{t.no_answers} no-answers, {t.leases_left_to_expire} leases left to expire, "
            f"{t.sessions_died} sessions died, {t.nodes_died_on_call} nodes died on a call "
            f"({t.talks_outlived_lease} talks outlived their lease), "
            f"{t.answer_refused} answers refused, {t.ringall_races} ringall races "
            f"({t.ringall_double_wins} double wins); agents: {dict(t.agent_actions)}; "
            f"{self.events} events; problems: {len(self.problems)}"
        )


def configure(url: str, processes: int, agents: int) -> None:
    """Queues and members, set up once by the parent."""

    async def setup() -> None:
        aclient = aioredis.Redis.from_url(url, decode_responses=True)
        store = AcdStore(aclient, "soak-setup")
        for queue, settings in QUEUES.items():
            assert (await store.configure_queue(TENANT, queue, settings)).ok
        for process in range(processes):
            for index in range(agents):
                for queue in queues_of(process, index):
                    assert (await store.add_member(TENANT, queue, extension(process, index),
                                                   penalty=index % 3,
                                                   skill=(index * 37) % 101)).ok
        await aclient.aclose()

    asyncio.run(setup())


def run_soak(url: str, seconds: float, processes: int = 4, agents: int = 25,
             callers: int = 25, seed: int = 4) -> SoakReport:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.delete(keys.events_stream(TENANT))
    configure(url, processes, agents)
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        tallies = pool.starmap(run_process, [
            (url, p, agents, callers, seconds, seed * 1000 + p) for p in range(processes)])
    tally = Tally()
    for one in tallies:
        tally.merge(one)
    return check(url, client, seconds, processes, agents * processes, tally)


def check(url: str, client: redis.Redis, seconds: float, processes: int, agents: int,
          tally: Tally) -> SoakReport:
    problems: list[str] = []
    # Once every lease has run out, settle: nothing may stay reserved by a dead reservation.
    time.sleep(max(RESERVATION_LEASE_MS, CALL_LEASE_MS) / 1000 + 0.1)
    asyncio.run(_final_tick(url))
    events = read_all_events(client, TENANT)
    if client.xlen(keys.events_stream(TENANT)) != len(events) or \
            events[0]["event"] != "queue_configured":
        problems.append("the stream was trimmed: the replay cannot be complete")
    replay = EventReplay()
    try:
        replay.feed(events)
    except AssertionError as broken:
        problems.append(f"replay: {broken}")
    problems += replay_matches_redis(replay, client, TENANT)
    problems += redis_problems(client, TENANT)
    counts = Counter(e["event"] for e in events)
    seen = {
        "call_enqueued": tally.enqueued,
        "call_overflowed": tally.overflowed,
        "call_answered": tally.answered,
        "call_ended": tally.hangups + tally.nodes_died_on_call + tally.talks_outlived_lease,
        "call_abandoned": tally.abandoned,
    }
    for event, expected in seen.items():
        if counts[event] != expected:
            problems.append(f"{counts[event]} {event} events, the processes saw {expected}")
    by_lease = sum(1 for e in events if e["event"] == "call_failed_over"
                   and e.get("reason") == "call_lease_expired")
    if counts["call_failed_over"] != tally.failed_over + by_lease:
        problems.append(f"{counts['call_failed_over']} call_failed_over events: "
                        f"{tally.failed_over} by max wait and {by_lease} by lease expected")
    ended_by_lease = sum(1 for e in events if e["event"] == "call_ended"
                         and e.get("reason") == "lease_expired")
    if ended_by_lease != tally.nodes_died_on_call + tally.talks_outlived_lease:
        problems.append(f"{ended_by_lease} connected calls ended by lease, "
                        f"{tally.nodes_died_on_call} nodes died on a call and "
                        f"{tally.talks_outlived_lease} talks outlived their lease")
    if by_lease != tally.sessions_died:
        problems.append(f"{by_lease} calls failed over by lease, {tally.sessions_died} "
                        "sessions died")
    if tally.ringall_double_wins:
        problems.append(f"{tally.ringall_double_wins} ringall calls answered twice")
    for queue in QUEUE_NAMES:
        stats = {k: int(v) for k, v in client.hgetall(keys.queue_stats(TENANT, queue)).items()}
        for counter, event in (("calls_offered", "call_enqueued"),
                               ("calls_answered", "call_answered"),
                               ("calls_ended", "call_ended"),
                               ("calls_abandoned", "call_abandoned"),
                               ("calls_failed_over", "call_failed_over"),
                               ("calls_overflowed", "call_overflowed")):
            if stats.get(counter, 0) != replay.counts[(queue, event)]:
                problems.append(f"queue {queue}: {counter} {stats.get(counter, 0)}, "
                                f"the stream has {replay.counts[(queue, event)]} {event}")
    live = replay.live_calls()
    if live:
        problems.append(f"{len(live)} calls not over after every caller finished: "
                        f"{sorted(live.items())[:5]}")
    return SoakReport(seconds, processes, agents, tally, len(events), counts, problems)


async def _final_tick(url: str) -> None:
    aclient = aioredis.Redis.from_url(url, decode_responses=True)
    store = AcdStore(aclient, "soak-check")
    await store.tick(TENANT)
    await aclient.aclose()


def main() -> None:
    from tests.integration.acd_redis import start_redis_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--agents", type=int, default=25, help="agents per process")
    parser.add_argument("--callers", type=int, default=25, help="callers per process")
    args = parser.parse_args()
    server = start_redis_server()
    try:
        started = time.monotonic()
        report = run_soak(server.url, args.seconds, args.processes, args.agents, args.callers)
        print(report.summary())
        print(f"wall time {time.monotonic() - started:.1f} s")
        for problem in report.problems[:50]:
            print("PROBLEM:", problem)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
