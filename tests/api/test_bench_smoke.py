"""A short run of each benchmark, so they keep working; the figures come from running them in full."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import bench_auth
from bench import ledger as bench_ledger
from tests.conftest import run_blocking


def test_auth_benchmark_runs_and_prints_its_table(
    sqlite_only_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_blocking(lambda: asyncio.run(bench_auth.run(sqlite_only_database, 20)))
    assert [r.name for r in results] == ["GET /v1/me (API key), server", "same lookup, raw SQL"]
    assert all(r.count == 20 and len(r.latencies) == 20 for r in results)
    bench_auth.print_table(results)
    assert "ops/s" in capsys.readouterr().out


def test_ledger_benchmark_runs_every_path_and_leaves_the_books_clean(
    sqlite_only_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = bench_ledger.Config(
        database_url=sqlite_only_database,
        seconds=None,
        spends=12,
        concurrency=[3],
        wallets=20,
        warmup=2,
        paths=["http", "floor", "service", "raw"],
        folder=tmp_path,
        progress=False,
    )
    report = run_blocking(lambda: bench_ledger.run_fast(bench_ledger.run(config)))

    assert report.engine == "sqlite"
    assert report.workers == 1
    assert [(row.wallets, row.clients, row.path) for row in report.rows] == [
        (wallets, clients, path)
        for wallets in ("hot", "20")
        for clients in (3,)
        for path in ("http", "floor", "service", "raw")
    ]
    assert all(row.sample.count == 12 and row.sample.errors == 0 for row in report.rows)
    assert all(len(row.sample.latencies) == 12 for row in report.rows)
    assert all(report.ratio(row) == 1.0 for row in report.rows if row.path == "raw")
    assert report.breaches == []

    table = bench_ledger.table_lines(report)
    assert " ".join(table[0].split()) == "wallets clients path spends spends/s p50 ms p99 ms vs raw errors"
    assert [line.split()[:3] for line in table[2:]] == [
        [wallets, str(clients), label]
        for wallets in ("hot", "20")
        for clients in (3,)
        for label in ("HTTP", "HTTP+raw", "service", "raw")
    ]
    assert all(line.split()[-6] == "12" and line.split()[-1] == "0" for line in table[2:])
    bench_ledger.print_report(report)
    out = capsys.readouterr().out
    assert all(line in out for line in table)
    assert "prepaid check: clean" in out


def test_ledger_benchmark_on_postgresql_runs_the_plumbing_floor_too(
    empty_postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ``plumbing`` path (prepaid's app answering the debit with the raw SQL in the request's transaction)
    is served beside prepaid and the bare floor, and every path's debits balance the books."""
    config = bench_ledger.Config(
        database_url=empty_postgres_url,
        seconds=None,
        spends=12,
        concurrency=[3],
        wallets=20,
        warmup=2,
        paths=["http", "plumbing", "floor", "service", "raw"],
        folder=tmp_path,
        progress=False,
    )
    report = run_blocking(lambda: bench_ledger.run_fast(bench_ledger.run(config)))

    assert (report.engine, report.workers) == ("postgresql", 2)
    assert [row.path for row in report.rows] == ["http", "plumbing", "floor", "service", "raw"] * 2
    assert all(row.sample.count == 12 and row.sample.errors == 0 for row in report.rows)
    assert report.breaches == []
    labels = [line.split()[2] for line in bench_ledger.table_lines(report)[2:]]
    assert labels == ["HTTP", "app+raw", "HTTP+raw", "service", "raw"] * 2
    bench_ledger.print_report(report)
    assert "prepaid check: clean" in capsys.readouterr().out


def test_the_plumbing_path_is_refused_without_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_ledger.parse_args(["--paths", "http,plumbing"])
    assert "PostgreSQL only" in capsys.readouterr().err
