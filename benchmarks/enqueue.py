"""How each peer's users hand it a job: the app confirms its rows (sets ``confirmed_at``,
commits), then enqueues the jobs the way that queue's documentation says."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks import peers as bench_peers
from benchmarks.context import BenchContext, sql

Send = Callable[[list[str]], None]


def peer_sender(ctx: BenchContext, peer: str) -> tuple[Send, Callable[[], None]]:
    """A function that confirms ids (sets confirmed_at, commits) and enqueues their jobs
    the way the peer's users do, and a close function."""
    conn = ctx.connect()

    def stamp(ids: list[str]) -> None:
        conn.execute(sql()["confirm_peer_docs"], {"ids": ids})

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
            stamp(ids)
            queries.enqueue(
                [bench_peers.PGQ_ENTRYPOINT] * len(ids),
                [i.encode() for i in ids],
                [0] * len(ids),
            )

        return send_pgq, conn.close
    app = bench_peers.procrastinate_app(ctx.settings, sync=True)
    app.open()
    deferrer = app.configure_task(
        bench_peers.PROCRASTINATE_TASK, queue=bench_peers.PROCRASTINATE_QUEUE
    )

    def send_proc(ids: list[str]) -> None:
        stamp(ids)
        deferrer.batch_defer(*({"doc_id": i} for i in ids))

    def close_proc() -> None:
        app.close()
        conn.close()

    return send_proc, close_proc
