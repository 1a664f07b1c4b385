"""``create_app(settings) -> FastAPI``: routers, middleware, error handlers and the background runner."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from swagger_ui_bundle import swagger_ui_path

from prepaid import __version__, idempotency
from prepaid.audit.api import router as audit_router
from prepaid.auth import service as auth_service
from prepaid.auth.api import router as auth_router
from prepaid.catalog.api import router as catalog_router
from prepaid.db import Database, open_database, utcnow
from prepaid.deps import SAFE_METHODS, OptionalPrincipal, client_ip, credentials_from
from prepaid.errors import DomainError
from prepaid.ledger import jobs as ledger_jobs
from prepaid.ledger import service as ledger_service
from prepaid.ledger.api import router as ledger_router
from prepaid.metering import low_balance as metering_low_balance  # metering: low-balance alerts
from prepaid.metering import sessions as metering_sessions  # metering: metered sessions
from prepaid.metering import sessions_api as metering_sessions_api  # metering: AI holds, sessions
from prepaid.metering.api import router as metering_router
from prepaid.middleware import BodyLimitMiddleware, SecurityHeadersMiddleware, UnhandledErrorMiddleware
from prepaid.notify import apps_api as notify_apps_api
from prepaid.notify import jobs as notify_jobs
from prepaid.notify import realtime, webhooks_out
from prepaid.notify.api import router as notify_router
from prepaid.notify.email import build_mailer
from prepaid.observability import RequestContextMiddleware, configure_logging, log, metrics_payload
from prepaid.payments import api as payments_api
from prepaid.payments import checkout_pages, guest, reconcile
from prepaid.payments import jobs as payments_jobs
from prepaid.payments.gateways import build_gateways, sandbox, sandbox_pages
from prepaid.ratelimit import RateLimiter
from prepaid.responses import install_error_handlers
from prepaid.runner import Job, JobRunner
from prepaid.settings import Settings
from prepaid.web import admin as admin_pages
from prepaid.web import stats_api
from prepaid.web.account import router as account_router
from prepaid.web.admin_catalog import router as admin_catalog_router
from prepaid.web.api import router as web_router
from prepaid.web.render import install_page_handlers
from prepaid.web.shop import router as shop_router

WEB_DIR = Path(__file__).parent / "web"
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
)


async def _limit_by_caller(request: Request, principal: OptionalPrincipal) -> None:
    """Every ``/v1`` call counts against the read or write limit of its caller (user, key or address)."""
    who = principal.caller_id if principal is not None else f"ip:{client_ip(request)}"
    route_class = "read" if request.method in SAFE_METHODS else "write"
    await request.app.state.rate_limiter.hit(route_class, who)


def _caller_resolver(app: FastAPI) -> idempotency.CallerResolver:
    async def resolve(scope: Any) -> str | None:
        request = Request(scope)
        try:
            async with app.state.db.transaction(write=False) as session:
                principal = await auth_service.resolve_principal(
                    session, credentials=credentials_from(request), settings=app.state.settings
                )
        except DomainError:
            return None
        return principal.caller_id if principal is not None else None

    return resolve


def _ops_router() -> APIRouter:
    router = APIRouter(include_in_schema=True, tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "The database is not reachable"}})
    async def readyz(request: Request) -> JSONResponse:
        db: Database = request.app.state.db
        try:
            async with db.transaction(write=False) as session:
                await session.execute(text("SELECT 1"))
        except Exception:
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        payload, content_type = metrics_payload()
        return Response(payload, media_type=content_type)

    @router.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        html = (WEB_DIR / "templates" / "docs.html").read_text()
        return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_CSP})

    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(json_logs=settings.env == "production")
    mailer = build_mailer(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = open_database(
            settings.database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
        )
        app.state.db = db
        # Built once: an enabled gateway without its keys stops the start (GatewayNotConfigured).
        gateways = build_gateways(settings, database=db)
        app.state.gateways = gateways
        try:
            async with db.transaction() as session:
                await ledger_service.ensure_credit_scale(session, scale=settings.credit_scale)
        except (OSError, SQLAlchemyError) as error:
            # Alive but not ready: /readyz says so, and the scale is checked again by `serve` and `migrate`.
            log.warning("database_unreachable_at_start", error_type=type(error).__name__)
        runner = JobRunner(
            db,
            settings,
            [
                Job("outbox", notify_jobs.delivery_job(mailer)),
                Job("idempotency_purge", lambda db, _settings: idempotency.purge_expired(db)),
                Job("hold_expiry", ledger_jobs.expire_holds),
                Job("lot_expiry", ledger_jobs.sweep_expired_lots),
                Job("order_expiry", payments_jobs.expire_orders),
                Job("gateway_events", payments_jobs.process_events),
                Job("reconcile", reconcile.reconcile_job(gateways)),  # reconciliation: pending orders
                Job("guest_notifications", guest.notify_paid_guests),  # guest checkout: claim links
                Job("refunds", payments_jobs.refund_job(gateways)),  # refunds: send again
                Job("payment_failure_alert", notify_jobs.failure_alert_job()),  # notifications
                Job("webhooks", webhooks_out.delivery_job()),  # outgoing webhooks to apps
                Job("metered_sessions", metering_sessions.enforce_job(lambda: app.state.clock())),  # metering
                Job("low_balance", metering_low_balance.scan_job),  # metering: low-balance alerts
                *(
                    [Job("sandbox_webhooks", sandbox.deliver_webhooks)]
                    if "sandbox" in settings.gateway_names
                    else []
                ),
            ],
        )
        app.state.runner = runner
        # realtime: this process's end of the stream (LISTEN/NOTIFY, Redis pub/sub, or in-process)
        hub_context = realtime.running_hub(database_url=settings.database_url, redis_url=settings.redis_url)
        app.state.realtime_hub = await hub_context.__aenter__()
        if settings.run_jobs:
            runner.start()
        # What start-up built lives as long as the app: kept out of the cyclic GC's full passes, which a
        # request allocating many objects (a usage batch) would otherwise trigger over all of it.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await runner.stop()
            await hub_context.__aexit__(None, None, None)
            for gateway in gateways.values():
                await gateway.aclose()
            await db.dispose()

    app = FastAPI(
        title="prepaid",
        version=__version__,
        description="Sell prepaid credits for AI and pay-per-use apps, and spend them safely.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.rate_limiter = RateLimiter(settings)
    app.state.rate_limiter.configure("order_create", settings.rate_limit_order_create)
    app.state.rate_limiter.configure("order_verify", settings.rate_limit_order_verify)
    app.state.mailer = mailer
    app.state.clock = utcnow  # metering: the sessions' time source (tests replace it)
    install_error_handlers(app)
    install_page_handlers(app)  # web pages: redirect to sign in, refuse a form without its CSRF token

    v1 = [Depends(_limit_by_caller)]
    app.include_router(auth_router, dependencies=v1)
    app.include_router(audit_router, dependencies=v1)
    app.include_router(ledger_router, dependencies=v1)
    app.include_router(catalog_router, dependencies=v1)
    app.include_router(notify_router, dependencies=v1)  # in-app notifications
    app.include_router(metering_router, dependencies=v1)  # metering: customers by external id, usage
    app.include_router(notify_apps_api.router, dependencies=v1)  # outgoing webhook endpoints (admin)
    app.include_router(notify_apps_api.stream_router)  # the realtime WebSocket, /v1/stream
    app.include_router(metering_sessions_api.router, dependencies=v1)  # metering: AI holds, sessions
    # Orders resolve their caller in a read-only transaction (gateway calls must not hold a write lock).
    app.include_router(payments_api.router, dependencies=[Depends(payments_api.limit_by_caller)])
    app.include_router(payments_api.webhooks)  # authenticated by the gateway's signature alone
    app.include_router(reconcile.router, dependencies=v1)  # GET /v1/admin/gateway_orders
    # POST /v1/guest_orders (PREPAID_GUEST_CHECKOUT): like orders, the caller is resolved read-only
    app.include_router(guest.router, dependencies=[Depends(payments_api.limit_by_caller)])
    app.include_router(checkout_pages.router)  # return page, order status, checkout_url, guest claim
    app.include_router(_ops_router())
    app.include_router(web_router)
    app.include_router(shop_router)  # / (prices) and /buy
    app.include_router(admin_catalog_router)  # the admin panel's catalog and webhook pages
    app.include_router(account_router)  # /account: wallets, orders, disputes, keys, notifications
    app.include_router(stats_api.router, dependencies=v1)  # GET /v1/admin/stats
    app.include_router(admin_pages.router)  # the admin panel: dashboard, users, orders, disputes, audit
    if "sandbox" in settings.gateway_names:
        app.include_router(sandbox_pages.router)  # the sandbox gateway's hosted checkout (not under /v1)
    app.mount("/static/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")
    app.mount("/static", StaticFiles(directory=str(WEB_DIR / "static")), name="static")

    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(
        idempotency.IdempotencyMiddleware,
        database=lambda: app.state.db,
        caller=_caller_resolver(app),
        ttl=settings.idempotency_ttl,
        secret_key=settings.secret_key,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Api-Key", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After", "Idempotent-Replayed"],
        )
    app.add_middleware(SecurityHeadersMiddleware, https=settings.base_url.startswith("https://"))
    trusted = frozenset(p.strip() for p in settings.trusted_proxies.split(",") if p.strip())
    app.add_middleware(RequestContextMiddleware, trusted_proxies=trusted)
    _document_errors(app)
    return app


IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retry safe: the first answer is stored for 24 h and replayed for the same key and body.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
}
V1_ERRORS = {
    "400": "Invalid request",
    "401": "Missing, invalid or expired credentials",
    "403": "Not allowed for this caller (role, API key scope, or a cookie call without X-CSRF-Token)",
    "404": "No such resource, or not one of yours",
    "409": "Conflict (a request with this Idempotency-Key is still running, or the resource exists)",
    "413": "The request body is over the size limit",
    "415": "The request body is not JSON",
    "429": "Rate limited; see Retry-After",
}


def _v1_error_statuses(method: str, operation: dict[str, Any]) -> list[str]:
    """What any ``/v1`` call can answer besides its own: every call resolves the caller's credentials (401 when
    they are bad, 403 for a cookie call without its CSRF token) and counts against a rate limit (429); a POST
    can reuse or race an Idempotency-Key (400, 409); a body can be too large or not JSON; a path id can name
    nothing the caller may see."""
    codes = ["401", "403", "429"]
    if method == "post":
        codes += ["400", "409"]
    if "requestBody" in operation:
        codes += ["413", "415"]
    if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
        codes.append("404")
    return codes


def _document_errors(app: FastAPI) -> None:
    """Validation errors answer 400 in the error format; say so in the OpenAPI document, with the errors every
    ``/v1`` operation can answer."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Error"] = {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["type", "code", "message"],
                    "properties": {
                        "type": {"type": "string"},
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                    },
                }
            },
        }
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path, path_item in schema.get("paths", {}).items():
            for method, operation in path_item.items():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None or operation.get("parameters") is not None:
                    responses["400"] = {"description": "Invalid request", **error_ref}
                if path.startswith("/v1/") and method == "post":
                    operation.setdefault("parameters", []).append(IDEMPOTENCY_PARAMETER)
                if path.startswith("/v1/"):
                    for code in _v1_error_statuses(method, operation):
                        responses.setdefault(code, {"description": V1_ERRORS[code]}).setdefault(
                            "content", error_ref["content"]
                        )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
