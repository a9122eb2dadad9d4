"""s3-outbox workers: relay, Dramatiq actors, sweeper, metrics and the operator CLI.

Kept free of imports: ``worker.actors`` must set up Prometheus multiprocess mode before
anything imports prometheus_client.
"""
