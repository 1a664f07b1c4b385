"""A short run of each benchmark, so they keep working; the figures come from running them in full."""

from __future__ import annotations

import asyncio

import pytest

from bench import bench_auth
from tests.conftest import run_blocking


def test_auth_benchmark_runs_and_prints_its_table(
    sqlite_only_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_blocking(lambda: asyncio.run(bench_auth.run(sqlite_only_database, 20)))
    assert [r.name for r in results] == ["GET /v1/me (API key), server", "same lookup, raw SQL"]
    assert all(r.count == 20 and len(r.latencies) == 20 for r in results)
    bench_auth.print_table(results)
    assert "ops/s" in capsys.readouterr().out
