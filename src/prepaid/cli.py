"""The ``prepaid`` command: serve, migrate, create-admin, demo, check, reconcile."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from prepaid.settings import Settings, SettingsError

app = typer.Typer(help="prepaid: sell prepaid credits and spend them safely.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except (SettingsError, ValidationError) as error:
        message = str(error)
        if isinstance(error, ValidationError):
            # Name the variable to fix (PREPAID_GATEWAYS: ...), without pydantic's "Value error, " prefix.
            message = "; ".join(
                (f"PREPAID_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
                + str(e["msg"]).removeprefix("Value error, ")
                for e in error.errors()
            )
        err.print(f"[bold red]Configuration error:[/] {message}")
        raise typer.Exit(2) from None


def _migrate(settings: Settings) -> None:
    from prepaid.migrate import upgrade

    upgrade(settings.database_url)
    _check_credit_scale(settings)


def _check_credit_scale(settings: Settings) -> None:
    """The scale is stored with the database the first time; a server configured otherwise stops here."""
    from prepaid.db import open_database
    from prepaid.ledger.service import SettingsMismatch, ensure_credit_scale

    async def run() -> None:
        db = open_database(settings.database_url)
        try:
            async with db.transaction() as session:
                await ensure_credit_scale(session, scale=settings.credit_scale)
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except SettingsMismatch as error:
        err.print(f"[bold red]Credit scale mismatch:[/] {error}")
        raise typer.Exit(2) from None


async def _schema_is_current(settings: Settings) -> tuple[str | None, str | None]:
    from prepaid.db import create_engine
    from prepaid.migrate import current_revision, head_revision

    engine = create_engine(settings.database_url)
    try:
        return await current_revision(engine), head_revision(settings.database_url)
    finally:
        await engine.dispose()


def _check_gateways(settings: Settings) -> None:
    """An enabled gateway without its keys stops the start here, naming the settings to set, rather than
    failing inside each worker's startup."""
    from prepaid.payments.gateways import GatewayNotConfigured, build_gateways

    async def build_and_close() -> None:
        for gateway in build_gateways(settings).values():
            await gateway.aclose()

    try:
        asyncio.run(build_and_close())
    except GatewayNotConfigured as error:
        err.print(f"[bold red]Configuration error:[/] {error}")
        raise typer.Exit(2) from None


def _run_server(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    if workers > 1 and settings.is_sqlite:
        err.print(
            "[bold red]SQLite serves one process:[/] --workers must be 1 with a SQLite database. "
            "Use PostgreSQL (PREPAID_DATABASE_URL=postgresql+asyncpg://...) for several workers."
        )
        raise typer.Exit(2)
    try:
        current, head = asyncio.run(_schema_is_current(settings))
    except Exception as error:
        err.print(f"[bold red]Cannot reach the database:[/] {type(error).__name__}: {error}")
        raise typer.Exit(2) from None
    if current != head:
        err.print(
            f"[bold red]The database schema is at {current or 'nothing'}, not {head}:[/] "
            "run `prepaid migrate` first."
        )
        raise typer.Exit(2)
    _check_credit_scale(settings)
    _check_gateways(settings)
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its metrics here; /metrics aggregates them.
        metrics_dir = tempfile.mkdtemp(prefix="prepaid-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    console.print(f"prepaid serving on http://{host}:{port} ({settings.env}, {workers} worker(s))")
    try:
        uvicorn.run(
            "prepaid.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=False,
            server_header=False,
            log_level="warning",
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (PostgreSQL only above 1).")] = 1,
) -> None:
    """Serve the API and the pages."""
    _run_server(_settings(), host, port, workers)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    settings = _settings()
    _migrate(settings)
    console.print("[green]Database schema is up to date.[/]")


@app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(help="The admin's email.")],
    password: Annotated[str | None, typer.Option(help="Generated and printed once when omitted.")] = None,
) -> None:
    """Create an admin account (or make an existing account an admin)."""
    from prepaid.auth.service import normalize_email
    from prepaid.db import open_database
    from prepaid.demo import ensure_admin, generate_password

    settings = _settings()
    if password is not None and len(password) < 10:
        err.print("[bold red]The password must be at least 10 characters.[/]")
        raise typer.Exit(2)

    async def run() -> tuple[str, str | None]:
        db = open_database(settings.database_url)
        try:
            async with db.transaction() as session:
                return await ensure_admin(session, email=normalize_email(email), password=password)
        finally:
            await db.dispose()

    chosen = password
    user_id, printed = asyncio.run(run())
    if printed is None and chosen is None:
        # An existing account keeps its password unless one is given; a generated one is set here.
        chosen = generate_password()

        async def set_password() -> None:
            db = open_database(settings.database_url)
            try:
                async with db.transaction() as session:
                    await ensure_admin(session, email=normalize_email(email), password=chosen)
            finally:
                await db.dispose()

        asyncio.run(set_password())
        printed = chosen
    console.print(f"Admin [bold]{normalize_email(email)}[/] ({user_id})")
    if password is None and printed:
        console.print(f"Password (shown once): [bold]{printed}[/]")


DEMO_SIGNUP_CREDITS = 3


@app.command()
def demo(port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000) -> None:
    """Create (or reuse) a SQLite database here, seed demo data, and serve it."""
    from prepaid.db import open_database
    from prepaid.demo import seed

    settings = _settings()
    # Emailed links point at this demo's own port, and a new customer gets 3 free credits, unless set
    # otherwise; the server process reads its settings from the environment.
    if "base_url" not in settings.model_fields_set:
        os.environ["PREPAID_BASE_URL"] = f"http://127.0.0.1:{port}"
    if "signup_credits" not in settings.model_fields_set:
        os.environ["PREPAID_SIGNUP_CREDITS"] = str(DEMO_SIGNUP_CREDITS)
    settings = _settings()
    _migrate(settings)

    async def run() -> list[tuple[str, str, str]]:
        db = open_database(settings.database_url)
        try:
            async with db.transaction() as session:
                return [(a.email, a.password, a.role) for a in await seed(session)]
        finally:
            await db.dispose()

    created = asyncio.run(run())
    for email, password, role in created:
        console.print(f"Demo {role}: [bold]{email}[/]  password (shown once): [bold]{password}[/]")
    if not created:
        console.print(
            "Demo accounts already exist (admin@example.com, demo@example.com); their passwords were printed "
            "when they were created. Set a new one with `prepaid create-admin --email admin@example.com`."
        )
    console.print(f"Open http://127.0.0.1:{port}/ (API docs at /docs). Ctrl+C stops the server.")
    _run_server(settings, "127.0.0.1", port, 1)


@app.command()
def check() -> None:
    """Verify every ledger invariant; exits 1 and names each breach."""
    from rich.table import Table

    from prepaid.db import open_database
    from prepaid.ledger.service import Breach, check_invariants

    settings = _settings()

    async def run() -> list[Breach]:
        db = open_database(settings.database_url)
        try:
            async with db.transaction(write=False) as session:
                return await check_invariants(session)
        finally:
            await db.dispose()

    try:
        breaches = asyncio.run(run())
    except Exception as error:
        err.print(f"[bold red]Cannot check the ledger:[/] {type(error).__name__}; is the database migrated?")
        raise typer.Exit(2) from None
    if not breaches:
        console.print("[green]Ledger check passed: every invariant holds.[/]")
        return
    table = Table(title=f"{len(breaches)} ledger invariant breach(es)")
    for column in ("invariant", "subject", "detail"):
        table.add_column(column)
    for breach in breaches:
        table.add_row(breach.invariant, breach.subject, breach.detail)
    console.print(table)
    raise typer.Exit(1)


# ---- reconcile (payments: the gateway's orders beside ours)


@app.command()
def reconcile(
    gateway: Annotated[str | None, typer.Option(help="One gateway (default: every enabled one).")] = None,
    hours: Annotated[
        int, typer.Option(min=1, max=744, help="List the gateway's orders of the last N hours.")
    ] = 24,
    settle: Annotated[
        bool, typer.Option(help="Settle unpaid orders the gateway says are paid or failed.")
    ] = True,
) -> None:
    """Settle orders still pending by asking their gateway, then list the gateway's orders beside ours; exits 1
    when mismatches remain."""
    from datetime import timedelta

    from rich.progress import Progress
    from rich.table import Table

    from prepaid.db import open_database, utcnow
    from prepaid.payments import reconcile as reconciliation
    from prepaid.payments.gateways import build_gateways

    settings = _settings()

    async def run() -> tuple[list[reconciliation.Settled], list[reconciliation.GatewayOrderCompared]]:
        db = open_database(settings.database_url)
        gateways = build_gateways(settings, database=db)
        chosen = {name: gw for name, gw in gateways.items() if gateway in (None, name)}
        if gateway is not None and not chosen:
            raise typer.BadParameter(f"{gateway} is not enabled (PREPAID_GATEWAYS={settings.gateways}).")
        settled: list[reconciliation.Settled] = []
        rows: list[reconciliation.GatewayOrderCompared] = []
        try:
            with Progress(console=console, transient=False) as progress:
                if settle:
                    task = progress.add_task("Settling pending orders", total=None)
                    while True:
                        before = len(settled)

                        def grow(count: int, before: int = before) -> None:
                            progress.update(task, total=before + count)

                        batch = await reconciliation.reconcile_pending(
                            db,
                            chosen,
                            settings,
                            on_start=grow,
                            on_done=lambda _s: progress.advance(task),
                        )
                        settled += batch
                        if len(batch) < reconciliation.BATCH:
                            break
                    progress.update(task, total=len(settled), completed=len(settled))
                listing = progress.add_task("Comparing with the gateways", total=len(chosen))
                now = utcnow()
                for gw in chosen.values():
                    found, _more = await reconciliation.compare_gateway_orders(
                        db, gw, since=now - timedelta(hours=hours), until=now, limit=1000
                    )
                    rows += found
                    progress.advance(listing)
        finally:
            for gw in gateways.values():
                await gw.aclose()
            await db.dispose()
        return settled, rows

    try:
        settled, rows = asyncio.run(run())
    except typer.BadParameter:
        raise
    except Exception as error:
        err.print(f"[bold red]Cannot reconcile:[/] {type(error).__name__}: {error}")
        raise typer.Exit(2) from None
    changed = [item for item in settled if item.result != item.before]
    console.print(f"Asked about {len(settled)} pending attempt(s); {len(changed)} order(s) settled.")
    for item in changed:
        console.print(f"  {item.order_id} ({item.gateway}): {item.before} -> {item.result}")
    mismatched = [row for row in rows if row.mismatches]
    console.print(f"Compared {len(rows)} gateway order(s); {len(mismatched)} with mismatches.")
    if not mismatched:
        return
    table = Table(title="Mismatches")
    for column in ("gateway", "gateway order", "gateway status", "order", "order status", "mismatches"):
        table.add_column(column, overflow="fold")  # ids whole, even in a narrow terminal
    for row in mismatched:
        table.add_row(
            row.gateway,
            row.gateway_order_id,
            row.gateway_status or "-",
            row.order_id or "-",
            row.order_status or "-",
            ", ".join(row.mismatches),
        )
    console.print(table)
    raise typer.Exit(1)


def main() -> None:
    app()
