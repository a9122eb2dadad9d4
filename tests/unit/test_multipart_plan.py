"""The multipart plan (outbox.multipart.plan_for) and the settings that shape it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from outbox import Settings
from outbox.errors import InvalidInput
from outbox.multipart import plan_for, whole_file_sha256
from outbox.settings import GIB, MIB

SHA = "ab" * 32


def settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


def test_defaults() -> None:
    s = settings()
    assert s.multipart_threshold_bytes == 100 * MIB
    assert s.multipart_part_size_bytes == 16 * MIB
    assert s.max_upload_bytes == 50 * GIB
    assert s.multipart_upload_window_seconds == 24 * 3600


def test_at_or_below_the_threshold_is_one_put() -> None:
    s = settings()
    assert plan_for(1, s) is None
    assert plan_for(100 * MIB, s) is None


def test_above_the_threshold_parts_of_the_configured_size() -> None:
    plan = plan_for(100 * MIB + 1, settings())
    assert plan is not None
    assert (plan.part_size, plan.part_count, plan.last_part_size) == (16 * MIB, 7, 4 * MIB + 1)
    assert plan.part_range(1) == (0, 16 * MIB)
    assert plan.part_range(7) == (96 * MIB, 4 * MIB + 1)
    assert sum(plan.part_range(n)[1] for n in range(1, 8)) == plan.size
    with pytest.raises(ValueError):
        plan.part_range(8)
    with pytest.raises(ValueError):
        plan.part_range(0)


def test_an_exact_multiple_has_a_full_last_part() -> None:
    plan = plan_for(32 * MIB, settings(multipart_threshold_bytes=MIB))
    assert plan is not None
    assert (plan.part_count, plan.last_part_size) == (2, 16 * MIB)


@pytest.mark.parametrize("size", [160_000 * MIB + 1, 500 * GIB, 5 * 1024 * GIB])
def test_the_part_size_is_raised_in_whole_mib_to_stay_within_10000_parts(size: int) -> None:
    s = settings(max_upload_bytes=5 * 1024 * GIB)
    plan = plan_for(size, s)
    assert plan is not None
    assert plan.part_count <= 10_000
    assert plan.part_size % MIB == 0 and plan.part_size > 16 * MIB
    # Whole MiB, and the smallest such: one MiB less would need more than 10,000 parts.
    assert -(-size // (plan.part_size - MIB)) > 10_000
    assert plan.part_size <= 5 * GIB


def test_exactly_10000_parts_of_the_configured_size_are_not_raised() -> None:
    plan = plan_for(10_000 * 16 * MIB, settings())
    assert plan is not None
    assert (plan.part_size, plan.part_count) == (16 * MIB, 10_000)


@pytest.mark.parametrize(
    "overrides",
    [
        {"multipart_part_size_bytes": 5 * MIB - 1},
        {"multipart_part_size_bytes": 5 * GIB + 1},
        {"multipart_threshold_bytes": 0},
        {"multipart_threshold_bytes": 5 * GIB + 1},
        {"max_upload_bytes": 5 * 1024 * GIB + 1},
        {"multipart_upload_window_seconds": 59},
        {"multipart_upload_window_seconds": 7 * 24 * 3600 + 1},
    ],
)
def test_settings_out_of_bounds_are_refused(overrides: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        settings(**overrides)


def test_whole_file_sha256_is_required_for_one_put_and_refused_for_parts() -> None:
    s = settings()
    assert whole_file_sha256(SHA.upper(), None, s) == SHA
    with pytest.raises(InvalidInput, match="required") as missing:
        whole_file_sha256(None, None, s)
    assert missing.value.details == {"multipart_threshold_bytes": 100 * MIB}
    plan = plan_for(200 * MIB, s)
    assert whole_file_sha256(None, plan, s) is None
    with pytest.raises(InvalidInput, match="each part's SHA-256") as err:
        whole_file_sha256(SHA, plan, s)
    assert err.value.details == {"multipart_threshold_bytes": 100 * MIB}
