"""The benchmark (``make bench``, ``python -m benchmarks``), outside the wheel, as dramatiq
keeps its ``benchmarks/`` beside its package: every performance figure in one run, with the
peers (pgqueuer, procrastinate, plain Dramatiq) doing the same job on the same servers."""

# One module per part, imported one way (each only from those above it):
#   peers       the peers' workers (pgqueuer, procrastinate, plain Dramatiq): child processes
#   config      BenchConfig, the parts, the fixed shape of the work
#   measure     summaries over rounds, percentiles, CpuMeter, machine info
#   context     BenchContext: settings, database, child processes, shared by every part
#   documents   objects and documents made before anything is timed
#   timing      paced offers, waiting for verified rows, times from the database clock
#   limits      part 1, the machine's limits
#   end_to_end  part 2, s3-outbox end to end
#   api         part 3, the library's calls in the caller's transaction
#   relay       part 4, the relay alone: a backlog claimed and handed to Redis
#   notify      part 5, commits/s with and without the events trigger's NOTIFY
#   flat        part 6, list, scrape and claims as data grows
#   enqueue     how each peer's users hand it a job
#   comparison  part 4, the peers beside s3-outbox
#   multipart   part 5, large files: the upload helper beside boto3's multipart upload
#   prepare     the schemas every part needs
#   targets     the targets on a run's medians
#   table       the README's table
#   servers     the run's embedded servers
#   cli         ``python -m benchmarks`` (``__main__``)
