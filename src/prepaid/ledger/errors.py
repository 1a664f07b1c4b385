from __future__ import annotations

from prepaid.errors import Conflict, InsufficientFunds, InvalidRequest


class InsufficientCredits(InsufficientFunds):
    def __init__(self, *, available: int, asset: str, wallet_id: str) -> None:
        super().__init__(
            f"Not enough credits: {available} available.",
            code="insufficient_credits",
            param="amount",
            available=available,
            asset=asset,
            wallet_id=wallet_id,
        )


class WalletFrozen(Conflict):
    default_code = "wallet_frozen"


class HoldNotPending(Conflict):
    default_code = "hold_not_pending"


class CaptureExceedsHold(InvalidRequest):
    default_code = "capture_exceeds_hold"


class AssetMismatch(InvalidRequest):
    default_code = "asset_mismatch"
