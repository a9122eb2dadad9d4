"""How each peer's users hand it a job: per document, what a web request's handler writes
(confirm the row, enqueue its job the way that queue's documentation says), a chunk of
documents per transaction as ours confirms them (``CONFIRM_CHUNK`` library calls, one
commit): the same per-document work on both sides of a comparison."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks import peers as bench_peers
from benchmarks.context import BenchContext, sql

Send = Callable[[list[str]], None]


def peer_sender(ctx: BenchContext, peer: str) -> tuple[Send, Callable[[], None]]:
    """A function that confirms ids (one UPDATE each, one commit) and enqueues their jobs
    the way the peer's users do, one call per document, and a close function."""
    conn = ctx.connect()  # autocommit, as pgqueuer's driver requires; a block per chunk
    confirm = sql()["confirm_peer_doc"]

    def stamp(ids: list[str]) -> None:
        with conn.transaction():
            for doc_id in ids:
                conn.execute(confirm, {"id": doc_id})

    if peer == "dramatiq":
        broker = bench_peers.make_peer_broker(ctx.settings.redis_url)

        def send_dramatiq(ids: list[str]) -> None:
            stamp(ids)
            for doc_id in ids:  # after the commit: no outbox
                broker.enqueue(
                    bench_peers.message(bench_peers.VERIFY_QUEUE, bench_peers.VERIFY_ACTOR, doc_id)
                )

        def close_dramatiq() -> None:
            broker.close()
            conn.close()

        return send_dramatiq, close_dramatiq
    if peer == "pgqueuer":
        from pgqueuer.db import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries

        queries = SyncQueries(SyncPsycopgDriver(conn))

        def send_pgq(ids: list[str]) -> None:
            # Its own transaction-bound outbox: the job row commits with the confirm.
            with conn.transaction():
                for doc_id in ids:
                    conn.execute(confirm, {"id": doc_id})
                    queries.enqueue(bench_peers.PGQ_ENTRYPOINT, doc_id.encode(), 0)

        return send_pgq, conn.close
    app = bench_peers.procrastinate_app(ctx.settings, sync=True)
    app.open()
    deferrer = app.configure_task(
        bench_peers.PROCRASTINATE_TASK, queue=bench_peers.PROCRASTINATE_QUEUE
    )

    def send_proc(ids: list[str]) -> None:
        stamp(ids)
        for doc_id in ids:  # its sync app defers through its own connection, after the commit
            deferrer.defer(doc_id=doc_id)

    def close_proc() -> None:
        app.close()
        conn.close()

    return send_proc, close_proc
