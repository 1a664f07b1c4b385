"""A short run of ``bench/usage.py`` on SQLite: every batch size on both paths, every request charged, the books
clean, the table printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import usage as bench_usage
from tests.conftest import run_blocking


def test_usage_benchmark_runs_every_batch_size_and_leaves_the_books_clean(
    sqlite_only_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = bench_usage.Config(
        database_url=sqlite_only_database,
        seconds=None,
        requests=6,
        concurrency=2,
        batches=[1, 100, 1000],
        wallets=5,
        warmup=1,
        folder=tmp_path,
        progress=False,
    )
    report = run_blocking(lambda: bench_usage.run_fast(bench_usage.run(config)))

    assert (report.engine, report.workers) == ("sqlite", 1)
    assert [(row.batch, row.path) for row in report.rows] == [
        (batch, path) for batch in (1, 100, 1000) for path in ("http", "raw")
    ]
    assert all(row.sample.count == 6 and row.sample.errors == 0 for row in report.rows)
    assert all(report.ratio(row) == 1.0 for row in report.rows if row.path == "raw")
    assert report.breaches == []
    table = bench_usage.table_lines(report)
    assert table[0].split()[:4] == ["batch", "path", "requests", "req/s"]
    bench_usage.print_report(report)
    out = capsys.readouterr().out
    assert all(line in out for line in table)
    assert "prepaid check: clean" in out
