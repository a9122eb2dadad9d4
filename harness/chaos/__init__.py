"""The chaos run: the whole system as real processes, a mixed upload load, and faults.

``run_chaos(ChaosConfig(...))`` (or ``make chaos`` (``python -m harness.chaos``)):

1. starts the embedded servers (PostgreSQL, Valkey, SeaweedFS) on free ports in a temporary
   folder, unless S3OUTBOX_DATABASE_URL, _REDIS_URL and _S3_ENDPOINT_URL are all set (then
   server restarts are skipped: those servers are not ours to restart), and applies the schema;
2. puts a fault-injecting proxy (``harness.faultproxy``) between the workers and storage; the
   clients' presigned URLs still go straight to storage;
3. starts relay, ``dramatiq worker.actors`` (several processes) and sweeper as real processes,
   each in its own process group;
4. drives N documents (or, with ``duration_minutes``, as many as fit in that soak) from
   several client threads through request -> HTTP PUT -> confirm, with deletes, duplicates,
   abandoned uploads, lost confirms, over-quota owners, objects tampered with behind the
   system's back, slow uploads that land after their URL expired, uploads with unsigned
   extra headers, and verifies while another app transaction holds the owner's quota row;
5. meanwhile, on a seeded random schedule: SIGKILL and restart of relay, worker and sweeper,
   Valkey restarted empty, PostgreSQL restarted with a fast shutdown, every worker down for
   longer than the rescue budget, windows of 403s from storage; the proxy answers 500/503,
   drops connections, delays, and hides fresh objects (404) for a while; every minute it
   prints documents/s, faults, dead events, lost documents and each process's RSS;
6. stops the faults, waits (bounded) until nothing is left to do, then checks every invariant
   (``harness.invariants.check_invariants``) and what each scenario must have ended as, and
   prints a table. ``ChaosResult.ok`` is False on any broken invariant or expectation, or on
   any dead event.
"""

# One module per part, imported one way (each only from those above it):
#   config     Scenario, EXPECTED, ChaosConfig
#   items      the seeded work (Item, ItemResult)
#   client     one client thread's web app calls and uploads (Client, Counters)
#   slow_put   a PUT whose body goes out piece by piece (SlowPut)
#   state      what the client threads share (ChaosRun)
#   multipart  the multipart scenario: parts over HTTP, a lying client, delete/abandon midway
#   scenarios  what a client does with one item, by scenario
#   load       the client threads
#   system     servers and settings of the run
#   processes  its processes: start, kill, stop, freeze, boot, RSS (ChaosProcesses)
#   faults     process, server and lasting faults on a seeded schedule (FaultScheduler)
#   monitor    the figures printed every minute (Monitor, Figures)
#   report     ChaosResult and its table
#   run        run_chaos: everything above in order, then settling and checks; main_chaos
#   __main__   ``python -m harness.chaos``

from harness.chaos.config import EXPECTED, ChaosConfig, Scenario
from harness.chaos.faults import LASTING_FAULTS, PROCESS_FAULTS, SERVER_FAULTS
from harness.chaos.report import ChaosResult, format_table
from harness.chaos.run import main_chaos, run_chaos

__all__ = [
    "EXPECTED",
    "LASTING_FAULTS",
    "PROCESS_FAULTS",
    "SERVER_FAULTS",
    "ChaosConfig",
    "ChaosResult",
    "Scenario",
    "format_table",
    "main_chaos",
    "run_chaos",
]
