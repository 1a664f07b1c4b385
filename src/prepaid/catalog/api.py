"""The catalog over HTTP: plans, unit prices, meters, discount slabs, offers, coupons and quotes.

Reads are public (no credentials needed), and so are quotes and coupon validation; writes are for admins (a
signed-in admin, or an admin's API key with the ``admin`` scope) and each one is recorded in the audit log by
the service.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, status
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.convertors import Convertor, register_url_convertor

from prepaid.auth import service as auth_service
from prepaid.catalog import service
from prepaid.catalog.models import Coupon
from prepaid.catalog.schemas import (
    CouponAssign,
    CouponAssignmentRead,
    CouponCreate,
    CouponRead,
    CouponUpdate,
    CouponValidate,
    MeterCreate,
    MeterRead,
    MeterUpdate,
    MyCouponRead,
    OfferCreate,
    OfferRead,
    OfferUpdate,
    PlanCreate,
    PlanRead,
    PlanUpdate,
    QuoteCreate,
    QuoteRead,
    SlabRead,
    SlabsReplace,
    UnitPriceRead,
    UnitPricesReplace,
)
from prepaid.db import utcnow
from prepaid.deps import Admin, CurrentUser, OptionalPrincipal, Pagination, Session, SettingsDep
from prepaid.errors import AuthenticationError, NotFound, PermissionDenied
from prepaid.pagination import ListResponse
from prepaid.settings import Settings

router = APIRouter(prefix="/v1", tags=["catalog"])
PlanPath = Annotated[str, Path(max_length=64, description="The plan's id (pln_...) or its code.")]
CodePath = Annotated[str, Path(max_length=64, description="The meter's code.")]
OfferPath = Annotated[str, Path(max_length=64)]


def _require_admin(principal: auth_service.Principal | None, param: str) -> None:
    """For the admin-only views of public lists."""
    if principal is None:
        raise AuthenticationError()
    if not principal.is_admin:
        raise PermissionDenied(f"{param} is for admins.", code="admin_required", param=param)


async def _include_archived(
    principal: OptionalPrincipal,
    include_archived: Annotated[
        bool, Query(description="Admins: every one, inactive and archived ones too.")
    ] = False,
) -> bool:
    if include_archived:
        _require_admin(principal, "include_archived")
    return include_archived


IncludeArchived = Annotated[bool, Depends(_include_archived)]


# ---------------------------------------------------------------- plans


@router.get("/plans")
async def list_plans(session: Session, include_archived: IncludeArchived) -> ListResponse[PlanRead]:
    """Active plans, by sort order then code, each with its price per currency."""
    plans = await service.list_plans(session, include_archived=include_archived)
    return ListResponse[PlanRead](data=[PlanRead.of(plan) for plan in plans], has_more=False)


@router.get("/plans/{plan_id}")
async def get_plan(plan_id: PlanPath, session: Session) -> PlanRead:
    """A plan by id or code, archived ones too (orders refer to them)."""
    return PlanRead.of(await service.find_plan(session, plan_id))


@router.post("/plans", status_code=status.HTTP_201_CREATED)
async def create_plan(body: PlanCreate, admin: Admin, session: Session) -> PlanRead:
    plan = await service.create_plan(
        session,
        actor=admin.audit_actor,
        code=body.code,
        name=body.name,
        description=body.description,
        credits=body.credits,
        bonus_credits=body.bonus_credits,
        prices=body.prices,
        popular=body.popular,
        active=body.active,
        sort_order=body.sort_order,
    )
    return PlanRead.of(plan)


@router.patch("/plans/{plan_id}")
async def update_plan(plan_id: PlanPath, body: PlanUpdate, admin: Admin, session: Session) -> PlanRead:
    changes = body.changes()
    prices = changes.pop("prices", None)
    plan = await service.update_plan(
        session, plan_id=plan_id, actor=admin.audit_actor, changes=changes, prices=prices
    )
    return PlanRead.of(plan)


@router.post("/plans/{plan_id}/archive")
async def archive_plan(plan_id: PlanPath, admin: Admin, session: Session) -> PlanRead:
    return PlanRead.of(await service.archive_plan(session, plan_id=plan_id, actor=admin.audit_actor))


# ---------------------------------------------------------------- unit prices


@router.get("/catalog/unit_prices")
async def list_unit_prices(session: Session) -> ListResponse[UnitPriceRead]:
    """The price of one whole credit per currency, for custom quantities."""
    prices = await service.list_unit_prices(session)
    return ListResponse[UnitPriceRead](data=[UnitPriceRead.of(price) for price in prices], has_more=False)


@router.put("/catalog/unit_prices")
async def replace_unit_prices(
    body: UnitPricesReplace, admin: Admin, session: Session
) -> ListResponse[UnitPriceRead]:
    """Replace the whole list (an empty list removes custom quantities)."""
    prices = await service.replace_unit_prices(session, actor=admin.audit_actor, prices=body.items())
    return ListResponse[UnitPriceRead](data=[UnitPriceRead.of(price) for price in prices], has_more=False)


# ---------------------------------------------------------------- meters


@router.get("/meters")
async def list_meters(session: Session, include_archived: IncludeArchived) -> ListResponse[MeterRead]:
    """Active meters and model prices, by code."""
    meters = await service.list_meters(session, include_archived=include_archived)
    return ListResponse[MeterRead](data=[MeterRead.of(meter) for meter in meters], has_more=False)


@router.get("/meters/{code}")
async def get_meter(code: CodePath, session: Session) -> MeterRead:
    return MeterRead.of(await service.get_meter(session, code))


@router.post("/meters", status_code=status.HTTP_201_CREATED)
async def create_meter(body: MeterCreate, admin: Admin, session: Session) -> MeterRead:
    meter = await service.create_meter(
        session,
        actor=admin.audit_actor,
        code=body.code,
        name=body.name,
        description=body.description,
        kind=body.kind,
        unit=body.unit,
        price=body.price,
        per=body.per,
        input_price=body.input_price,
        output_price=body.output_price,
        cached_input_price=body.cached_input_price,
        active=body.active,
    )
    return MeterRead.of(meter)


@router.patch("/meters/{code}")
async def update_meter(code: CodePath, body: MeterUpdate, admin: Admin, session: Session) -> MeterRead:
    meter = await service.update_meter(session, code=code, actor=admin.audit_actor, changes=body.changes())
    return MeterRead.of(meter)


@router.post("/meters/{code}/archive")
async def archive_meter(code: CodePath, admin: Admin, session: Session) -> MeterRead:
    return MeterRead.of(await service.archive_meter(session, code=code, actor=admin.audit_actor))


# ---------------------------------------------------------------- discount slabs


@router.get("/discount_slabs")
async def list_discount_slabs(session: Session) -> ListResponse[SlabRead]:
    """Volume discounts by credits bought, by ascending threshold."""
    slabs = await service.discount_slabs(session)
    return ListResponse[SlabRead](data=[SlabRead.of(slab) for slab in slabs], has_more=False)


@router.put("/discount_slabs")
async def replace_discount_slabs(
    body: SlabsReplace, admin: Admin, session: Session
) -> ListResponse[SlabRead]:
    """Replace the whole list: thresholds strictly ascending, percents above 0 and below 100 and never
    smaller than the slab below. A bad list changes nothing."""
    slabs = await service.replace_discount_slabs(session, actor=admin.audit_actor, slabs=body.items())
    return ListResponse[SlabRead](data=[SlabRead.of(slab) for slab in slabs], has_more=False)


# ---------------------------------------------------------------- offers


@router.get("/offers")
async def list_offers(
    session: Session,
    principal: OptionalPrincipal,
    page: Pagination,
    show_all: Annotated[
        bool,
        Query(
            alias="all",
            description="Admins: every offer (past, future, inactive, archived), newest first, paged.",
        ),
    ] = False,
) -> ListResponse[OfferRead]:
    """The offers live now (the whole list, oldest first); ``limit`` and the cursors apply to ``all=true``."""
    if show_all:
        _require_admin(principal, "all")
        every = await service.list_offers(session, params=page)
        return ListResponse[OfferRead](
            data=[OfferRead.of(offer) for offer in every.data], has_more=every.has_more
        )
    offers = await service.active_offers(session, utcnow())
    return ListResponse[OfferRead](data=[OfferRead.of(offer) for offer in offers], has_more=False)


@router.get("/offers/{offer_id}")
async def get_offer(offer_id: OfferPath, session: Session, principal: OptionalPrincipal) -> OfferRead:
    """A live offer; admins see every offer."""
    offer = await service.get_offer(session, offer_id)
    if not (principal is not None and principal.is_admin) and not service.is_offer_live(offer, utcnow()):
        raise NotFound(f"No offer {offer_id}.", param="offer_id")
    return OfferRead.of(offer)


@router.post("/offers", status_code=status.HTTP_201_CREATED)
async def create_offer(body: OfferCreate, admin: Admin, session: Session) -> OfferRead:
    offer = await service.create_offer(
        session,
        actor=admin.audit_actor,
        name=body.name,
        description=body.description,
        kind=body.kind,
        percent_bps=body.percent_bps,
        bonus_credits=body.bonus_credits,
        plan_codes=body.plan_codes,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        active=body.active,
    )
    return OfferRead.of(offer)


@router.patch("/offers/{offer_id}")
async def update_offer(offer_id: OfferPath, body: OfferUpdate, admin: Admin, session: Session) -> OfferRead:
    offer = await service.update_offer(
        session, offer_id=offer_id, actor=admin.audit_actor, changes=body.changes()
    )
    return OfferRead.of(offer)


@router.post("/offers/{offer_id}/archive")
async def archive_offer(offer_id: OfferPath, admin: Admin, session: Session) -> OfferRead:
    return OfferRead.of(await service.archive_offer(session, offer_id=offer_id, actor=admin.audit_actor))


# ---------------------------------------------------------------- coupons


class _CouponCodeConvertor(Convertor[str]):
    """A coupon code in a path: any segment but ``validate`` (in any case), which belongs to
    ``POST /v1/coupons/validate`` (so that path answers 405 with ``Allow: POST`` to other methods, as its
    document says). No coupon can be called VALIDATE."""

    regex = "(?!(?i:validate)(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("coupon_code", _CouponCodeConvertor())
CouponPath = Annotated[str, Path(max_length=64, description="The coupon's code (any case).")]
UserPath = Annotated[str, Path(max_length=64)]

_COUPON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_COUPON_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "coupon_expired, coupon_not_started, coupon_not_applicable, coupon_min_amount (param "
        "coupon), or a purchase that cannot be priced (currency_not_available, quantity_out_of_range, "
        "plan_not_available)",
        "content": _COUPON_ERROR,
    },
    403: {
        "description": "coupon_not_assigned: allotted to other users, or needs a signed-in user",
        "content": _COUPON_ERROR,
    },
    404: {"description": "coupon_not_found, or no such plan", "content": _COUPON_ERROR},
    409: {"description": "coupon_exhausted, coupon_per_user_limit", "content": _COUPON_ERROR},
}


async def _coupon_reads(session: AsyncSession, coupons: list[Coupon]) -> list[CouponRead]:
    usage = await service.coupon_usage(session, [coupon.id for coupon in coupons], now=utcnow())
    return [CouponRead.of(coupon, usage[coupon.id]) for coupon in coupons]


async def _coupon_read(session: AsyncSession, coupon: Coupon) -> CouponRead:
    (read,) = await _coupon_reads(session, [coupon])
    return read


@router.get("/coupons")
async def list_coupons(admin: Admin, session: Session, page: Pagination) -> ListResponse[CouponRead]:
    """Every coupon, archived ones too, newest first."""
    coupons = await service.list_coupons(session, params=page)
    return ListResponse[CouponRead](
        data=await _coupon_reads(session, coupons.data), has_more=coupons.has_more
    )


@router.post("/coupons", status_code=status.HTTP_201_CREATED)
async def create_coupon(body: CouponCreate, admin: Admin, session: Session) -> CouponRead:
    coupon = await service.create_coupon(
        session,
        actor=admin.audit_actor,
        code=body.code,
        kind=body.kind,
        description=body.description,
        percent_bps=body.percent_bps,
        amount_off=body.amount_off,
        bonus_credits=body.bonus_credits,
        plan_codes=body.plan_codes,
        min_amount=body.min_amount,
        max_redemptions=body.max_redemptions,
        max_per_user=body.max_per_user,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        visibility=body.visibility,
        active=body.active,
    )
    return await _coupon_read(session, coupon)


@router.post("/coupons/validate", responses=_COUPON_REFUSALS)
async def validate_coupon(
    body: CouponValidate, principal: OptionalPrincipal, session: Session, settings: SettingsDep
) -> QuoteRead:
    """The quote with the coupon, or the exact reason the coupon does not apply (param ``coupon``)."""
    return await _quote(body, principal, session, settings)


@router.get("/coupons/{code:coupon_code}")
async def get_coupon(code: CouponPath, admin: Admin, session: Session) -> CouponRead:
    return await _coupon_read(session, await service.get_coupon(session, code, param="code"))


@router.patch("/coupons/{code:coupon_code}")
async def update_coupon(code: CouponPath, body: CouponUpdate, admin: Admin, session: Session) -> CouponRead:
    coupon = await service.update_coupon(session, code=code, actor=admin.audit_actor, changes=body.changes())
    return await _coupon_read(session, coupon)


@router.post("/coupons/{code:coupon_code}/archive")
async def archive_coupon(code: CouponPath, admin: Admin, session: Session) -> CouponRead:
    coupon = await service.archive_coupon(session, code=code, actor=admin.audit_actor)
    return await _coupon_read(session, coupon)


@router.get("/coupons/{code:coupon_code}/assignments")
async def list_coupon_assignments(
    code: CouponPath, admin: Admin, session: Session, page: Pagination
) -> ListResponse[CouponAssignmentRead]:
    """The users the coupon is allotted to, newest first."""
    assignments = await service.list_assignments(session, code=code, params=page)
    code = service.normalize_coupon_code(code)
    return ListResponse[CouponAssignmentRead](
        data=[CouponAssignmentRead.of(a, code) for a in assignments.data], has_more=assignments.has_more
    )


@router.post("/coupons/{code:coupon_code}/assignments")
async def assign_coupon(
    code: CouponPath, body: CouponAssign, admin: Admin, session: Session
) -> ListResponse[CouponAssignmentRead]:
    """Allot the coupon to these users (those already allotted stay as they are)."""
    assignments = await service.assign_coupon(
        session, code=code, user_ids=body.user_ids, actor=admin.audit_actor
    )
    code = service.normalize_coupon_code(code)
    return ListResponse[CouponAssignmentRead](
        data=[CouponAssignmentRead.of(a, code) for a in assignments], has_more=False
    )


@router.delete("/coupons/{code:coupon_code}/assignments/{user_id}")
async def withdraw_coupon(
    code: CouponPath, user_id: UserPath, admin: Admin, session: Session
) -> CouponAssignmentRead:
    """Take the coupon back from the user; orders they already started with it keep their reservation."""
    assignment = await service.withdraw_coupon(session, code=code, user_id=user_id, actor=admin.audit_actor)
    return CouponAssignmentRead.of(assignment, service.normalize_coupon_code(code), deleted=True)


@router.get("/me/coupons")
async def my_coupons(user: CurrentUser, session: Session, page: Pagination) -> ListResponse[MyCouponRead]:
    """The coupons allotted to you that you can still use (now, or once their window opens)."""
    now = utcnow()
    coupons = await service.my_coupons(session, user_id=user.id, now=now, params=page)
    left = await service.uses_left(session, coupons.data, user_id=user.id, now=now)
    return ListResponse[MyCouponRead](
        data=[MyCouponRead.of(coupon, left[coupon.id]) for coupon in coupons.data], has_more=coupons.has_more
    )


# ---------------------------------------------------------------- quotes


@router.post("/quotes", responses=_COUPON_REFUSALS)
async def create_quote(
    body: QuoteCreate, principal: OptionalPrincipal, session: Session, settings: SettingsDep
) -> QuoteRead:
    """What a plan or a custom quantity costs now, with an optional coupon. Anyone may ask; a coupon that
    needs a user (allotted, or limited per user) answers ``coupon_not_assigned`` to an anonymous caller."""
    return await _quote(body, principal, session, settings)


async def _quote(
    body: QuoteCreate, principal: auth_service.Principal | None, session: AsyncSession, settings: Settings
) -> QuoteRead:
    quote = await service.build_quote(
        session,
        currency=body.currency,
        settings=settings,
        now=utcnow(),
        plan_code=body.plan,
        quantity=body.quantity,
        coupon_code=body.coupon,
        user_id=principal.user.id if principal is not None else None,
    )
    return QuoteRead.of(quote)
