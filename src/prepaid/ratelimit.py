"""Rate limits per route class and per caller, on the ``limits`` library.

Counters live in memory (one process) or in Redis when ``PREPAID_REDIS_URL`` is set, so several processes
share them. A refused request is ``429 rate_limit_error`` with ``Retry-After`` in seconds. When Redis cannot be
reached the limiter lets requests through and logs it: a limit is protection, not a reason to go down.
"""

from __future__ import annotations

import hashlib
import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from prepaid.errors import RateLimited
from prepaid.observability import log
from prepaid.settings import Settings


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits_enabled
        self.storage: Storage = (
            # redis-py is the client prepaid depends on (limits defaults to coredis, which is not installed)
            RedisStorage(f"async+{settings.redis_url}", implementation="redispy")
            if settings.redis_url
            else MemoryStorage()
        )
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.limits: dict[str, RateLimitItem] = {
            "login_ip": parse(settings.rate_limit_login_ip),
            "login_email": parse(settings.rate_limit_login_email),
            "auth": parse(settings.rate_limit_auth),
            "read": parse(settings.rate_limit_read),
            "write": parse(settings.rate_limit_write),
        }

    def configure(self, route_class: str, limit: str) -> None:
        """Later domains register their own classes (for example order creation)."""
        self.limits[route_class] = parse(limit)

    async def hit(self, route_class: str, who: str) -> None:
        if not self.enabled:
            return
        item = self.limits[route_class]
        try:
            if await self.strategy.hit(item, route_class, who):
                return
            reset_at, _remaining = await self.strategy.get_window_stats(item, route_class, who)
        except Exception as error:
            log.warning("rate_limit_storage_unavailable", error_type=type(error).__name__)
            return
        raise RateLimited(retry_after=max(1, math.ceil(reset_at - time.time())))

    async def hit_email(self, email: str) -> None:
        """Sign-in and emailed-link attempts per address; the counter key is a hash, not the email itself."""
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
        await self.hit("login_email", digest)

    async def reset(self) -> None:
        await self.storage.reset()
