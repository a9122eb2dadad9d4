"""Maintenance jobs the sweeper runs (River's ``internal/maintenance``): one module per job."""

from worker.maintenance.bucket_walk import BucketWalk
from worker.maintenance.expire_abandoned import ExpireAbandoned
from worker.maintenance.job import Job
from worker.maintenance.multipart_walk import MultipartWalk
from worker.maintenance.prune_done import PruneDone
from worker.maintenance.rescue_stale import RescueStale, rescue_stale

__all__ = [
    "BucketWalk",
    "ExpireAbandoned",
    "Job",
    "MultipartWalk",
    "PruneDone",
    "RescueStale",
    "rescue_stale",
]
