"""Retry decisions, pure: backoff schedule, Retry-After parsing, Content-Range parsing."""

from __future__ import annotations

import random

import pytest

from mirror.errors import TransientError
from mirror.fetch import RetryPolicy
from mirror.partial import parse_content_range
from mirror.upstream import RETRY_AFTER_CAP_S, parse_retry_after


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(retries=10, base_s=0.5, max_s=4.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 4.0)]:
        delays = [policy.delay_s(attempt, None, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8  # jitter spans the range


def test_retry_after_overrides_backoff() -> None:
    policy = RetryPolicy(retries=3, base_s=0.5, max_s=4.0)
    assert policy.delay_s(1, 7.0, random.Random()) == 7.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("100000", RETRY_AFTER_CAP_S),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now_s=1.9e9) == expected


def test_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after("Thu, 01 Jan 2032 00:00:10 GMT", now_s=1956528000.0) == 10.0


def test_content_range() -> None:
    assert parse_content_range("bytes 100-199/200") == (100, 200)
    assert parse_content_range("bytes 100-199/*") == (100, -1)
    with pytest.raises(TransientError):
        parse_content_range("bytes */200")
