from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.responses import JSONResponse

from prepaid.auth import service
from prepaid.auth.schemas import (
    AcceptedResponse,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    DeleteAccountRequest,
    LoginRequest,
    MeRead,
    MeUpdate,
    PasswordResetConfirm,
    PasswordResetRequest,
    RefreshRequest,
    RegisterRequest,
    Role,
    TokenResponse,
    UserRead,
    UserUpdate,
    VerifyEmailRequest,
)
from prepaid.deps import Admin, Pagination, Person, Principal, ReadSession, Session, SettingsDep, rate_limit
from prepaid.errors import AuthenticationError, InvalidRequest
from prepaid.pagination import ListResponse
from prepaid.payments import service as payments_service
from prepaid.responses import error_response

router = APIRouter(prefix="/v1")
IdPath = Annotated[str, Path(max_length=64)]


def _tokens(pair: service.TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(rate_limit("auth"))],
    tags=["auth"],
)
async def register(body: RegisterRequest, session: Session, settings: SettingsDep) -> UserRead:
    user = await service.register(
        session, email=body.email, password=body.password, name=body.name, settings=settings
    )
    return UserRead.model_validate(user)


@router.post("/auth/login", dependencies=[Depends(rate_limit("login_ip", per_ip=True))], tags=["auth"])
async def login(
    body: LoginRequest, request: Request, reading: ReadSession, session: Session, settings: SettingsDep
) -> TokenResponse:
    await request.app.state.rate_limiter.hit_email(body.email)
    # The password is checked in a read transaction: the write lock is taken only to store the tokens.
    user = await service.authenticate(reading, email=body.email, password=body.password, settings=settings)
    return _tokens(await service.issue_tokens(session, user=user, settings=settings))


@router.post(
    "/auth/refresh",
    response_model=TokenResponse,
    responses={401: {"description": "Invalid, expired or reused refresh token"}},
    dependencies=[Depends(rate_limit("auth"))],
    tags=["auth"],
)
async def refresh(
    body: RefreshRequest, session: Session, settings: SettingsDep
) -> TokenResponse | JSONResponse:
    pair = await service.rotate_refresh_token(session, refresh_token=body.refresh_token, settings=settings)
    if pair is None:
        # Reuse of a spent token: the family is revoked in this transaction, which must commit, so the
        # error is returned rather than raised.
        return error_response(
            AuthenticationError(
                "This refresh token was already used; every session from that login is now signed out.",
                code="refresh_token_reused",
            )
        )
    return _tokens(pair)


@router.post("/auth/logout", tags=["auth"])
async def logout(body: RefreshRequest, session: Session) -> AcceptedResponse:
    await service.logout(session, refresh_token=body.refresh_token)
    return AcceptedResponse(message="Signed out.")


@router.post(
    "/auth/password_reset",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(rate_limit("auth"))],
    tags=["auth"],
)
async def request_password_reset(
    body: PasswordResetRequest, request: Request, session: Session, settings: SettingsDep
) -> AcceptedResponse:
    await request.app.state.rate_limiter.hit_email(body.email)
    await service.request_password_reset(session, email=body.email, settings=settings)
    return AcceptedResponse(message="If an account uses this email, a reset link is on its way.")


@router.post("/auth/password_reset/confirm", dependencies=[Depends(rate_limit("auth"))], tags=["auth"])
async def confirm_password_reset(body: PasswordResetConfirm, session: Session) -> AcceptedResponse:
    await service.reset_password(session, token=body.token, new_password=body.password)
    return AcceptedResponse(message="Your password is changed; sign in with the new one.")


@router.post("/auth/verify_email", dependencies=[Depends(rate_limit("auth"))], tags=["auth"])
async def verify_email(body: VerifyEmailRequest, session: Session) -> UserRead:
    return UserRead.model_validate(await service.verify_email(session, token=body.token))


@router.post(
    "/auth/verify_email/resend",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(rate_limit("auth"))],
    tags=["auth"],
)
async def resend_verification(
    body: PasswordResetRequest, request: Request, session: Session, settings: SettingsDep
) -> AcceptedResponse:
    """Public, so that a person who cannot sign in before verifying can still ask for a new link."""
    await request.app.state.rate_limiter.hit_email(body.email)
    await service.resend_email_verification(session, email=body.email, settings=settings)
    return AcceptedResponse(
        message="If this email has an account that is not verified yet, a new link is on its way."
    )


@router.get("/me", tags=["account"])
async def get_me(principal: Principal, session: Session) -> MeRead:
    totals = await payments_service.user_totals(session, user_id=principal.user.id)
    user = UserRead.model_validate(principal.user)
    return MeRead(**user.model_dump(), total_spent=totals.spent, lifetime_credits=totals.credits)


@router.patch("/me", tags=["account"])
async def update_me(body: MeUpdate, principal: Person, session: Session) -> UserRead:
    user = principal.user
    if body.new_password is not None:
        if body.current_password is None:
            raise InvalidRequest(
                "Give your current password to set a new one.", code="missing_field", param="current_password"
            )
        await service.change_password(
            session,
            user=user,
            current_password=body.current_password,
            new_password=body.new_password,
            keep_web_session=principal.web_session,
        )
    clear_phone = "phone" in body.model_fields_set and body.phone is None
    await service.update_profile(
        session, user=user, name=body.name, phone=body.phone, clear_phone=clear_phone
    )
    return UserRead.model_validate(user)


@router.post("/me/delete", tags=["account"])
async def delete_me(body: DeleteAccountRequest, principal: Person, session: Session) -> AcceptedResponse:
    await service.delete_account(session, user=principal.user, password=body.password)
    return AcceptedResponse(message="Your account is deleted and your personal data erased.")


@router.get("/users", tags=["users"])
async def list_users(
    _admin: Admin,
    session: Session,
    page: Pagination,
    email: Annotated[str | None, Query(max_length=320)] = None,
    role: Role | None = None,
) -> ListResponse[UserRead]:
    users = await service.list_users(session, params=page, email=email, role=role)
    return ListResponse[UserRead].of(users, UserRead)


@router.get("/users/{user_id}", tags=["users"])
async def get_user(user_id: IdPath, _admin: Admin, session: Session) -> UserRead:
    return UserRead.model_validate(await service.get_user(session, user_id))


@router.patch("/users/{user_id}", tags=["users"])
async def update_user(user_id: IdPath, body: UserUpdate, admin: Admin, session: Session) -> UserRead:
    user = await service.admin_update_user(
        session, actor=admin, user_id=user_id, roles=body.roles, active=body.active, name=body.name
    )
    return UserRead.model_validate(user)


@router.post("/api_keys", status_code=status.HTTP_201_CREATED, tags=["api_keys"])
async def create_api_key(body: ApiKeyCreate, principal: Person, session: Session) -> ApiKeyCreated:
    key, secret = await service.create_api_key(
        session, actor=principal, name=body.name, scopes=list(body.scopes), server=body.server
    )
    return ApiKeyCreated.model_validate({**ApiKeyRead.model_validate(key).model_dump(), "secret": secret})


@router.get("/api_keys", tags=["api_keys"])
async def list_api_keys(principal: Person, session: Session, page: Pagination) -> ListResponse[ApiKeyRead]:
    keys = await service.list_api_keys(session, actor=principal, params=page)
    return ListResponse[ApiKeyRead].of(keys, ApiKeyRead)


@router.delete("/api_keys/{key_id}", tags=["api_keys"])
async def revoke_api_key(key_id: IdPath, principal: Person, session: Session) -> ApiKeyRead:
    return ApiKeyRead.model_validate(await service.revoke_api_key(session, actor=principal, key_id=key_id))
