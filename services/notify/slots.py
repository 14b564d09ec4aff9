"""Delivery slots shared fairly: a slow endpoint delays only itself.

notify makes at most ``ANTING_NOTIFY_CONCURRENCY`` outbound calls at once. Handed out
first come first served, one tenant's slow webhooks took them all: with 70 webhooks
answering after 14 s, another tenant's webhook that answers in 0.15 s waited 41 s for
a slot. So, as Svix and Convoy queue per endpoint:

- a subscription has at most ``max_per_subscription`` calls in flight (its further
  deliveries wait for its own to finish, not for everyone's);
- a tenant has at most ``max_per_tenant`` (by default three quarters of the pool), so
  that other tenants find slots free even when one tenant's calls all hang at once;
- a freed slot goes to the waiting tenants in turn (round robin), and within a tenant
  to its waiting subscriptions in turn, each subscription's deliveries in the order
  they came — deficit round robin with every delivery costing one slot.

A delivery waiting for its turn is only a pending future: nothing polls, and the task
that waits is an ordinary in-flight task of its stage (:mod:`shared.stage`). A grant
costs O(1): only subscriptions and tenants below their caps with someone waiting are in
the rings.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["FairSlots"]


class _Tenant:
    """One tenant's waiting subscriptions, and how many slots it holds."""

    __slots__ = ("held", "in_ring", "ring")

    def __init__(self) -> None:
        self.held = 0
        self.ring: collections.deque[str] = collections.deque()  # subscriptions ready for a slot
        self.in_ring = False  # in FairSlots.ring


class FairSlots:
    """At most ``n`` holders at a time, ``max_per_subscription`` of one subscription and
    ``max_per_tenant`` of one tenant (``None``: three quarters of ``n``, at least one), handed
    out in turn across tenants and their subscriptions (see the module).

    Use ``await slots.acquire(tenant, sub_id)`` then ``slots.release(tenant, sub_id)`` (in a
    ``finally``). A waiter cancelled before its turn leaves no trace; one cancelled just as
    it was handed a slot passes the slot on. ``free`` is above zero only when nobody who
    could take a slot waits."""

    __slots__ = ("free", "held", "max_per_subscription", "max_per_tenant", "ready", "ring",
                 "tenants", "waiters")

    def __init__(self, n: int, max_per_subscription: int, max_per_tenant: int | None = None) -> None:
        if n < 1 or max_per_subscription < 1:
            raise ValueError("slots and the per-subscription cap must be at least 1")
        self.free = n
        self.max_per_subscription = max_per_subscription
        self.max_per_tenant = max_per_tenant if max_per_tenant is not None else max(1, n - n // 4)
        self.held: dict[str, int] = {}  # slots held per subscription (absent: none)
        self.tenants: dict[str, _Tenant] = {}  # tenants holding or waiting for slots
        self.waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}  # per subscription
        self.ready: set[str] = set()  # subscriptions in their tenant's ring
        self.ring: collections.deque[str] = collections.deque()  # tenants with a ready subscription

    async def acquire(self, tenant: str, sub_id: str) -> None:
        """Wait for a slot for a delivery of subscription ``sub_id`` of ``tenant``."""
        held = self.held.get(sub_id, 0)
        t = self.tenants.get(tenant)
        if (self.free > 0 and held < self.max_per_subscription
                and (t is None or t.held < self.max_per_tenant) and sub_id not in self.waiters):
            self.free -= 1
            self.held[sub_id] = held + 1
            if t is None:
                t = self.tenants[tenant] = _Tenant()
            t.held += 1
            return
        if t is None:
            t = self.tenants[tenant] = _Tenant()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self.waiters.get(sub_id)
        if queue is None:
            queue = self.waiters[sub_id] = collections.deque()
            if held < self.max_per_subscription:
                self._ready(tenant, t, sub_id)
        queue.append(fut)
        self._grant()  # a slot may be free that only this subscription's cap kept from others
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(tenant, sub_id)  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self, tenant: str, sub_id: str) -> None:
        """Give back a slot held for ``sub_id`` of ``tenant``; the next in turn gets it."""
        self.free += 1
        held = self.held[sub_id] - 1
        if held:
            self.held[sub_id] = held
        else:
            del self.held[sub_id]
        t = self.tenants[tenant]
        t.held -= 1
        if held == self.max_per_subscription - 1 and sub_id in self.waiters:
            self._ready(tenant, t, sub_id)  # below its cap again, with deliveries waiting
        if t.ring and not t.in_ring and t.held < self.max_per_tenant:
            t.in_ring = True
            self.ring.append(tenant)
        self._grant()
        if t.held == 0 and not t.ring and not t.in_ring:
            self._forget(tenant, t)

    def _ready(self, tenant: str, t: _Tenant, sub_id: str) -> None:
        if sub_id in self.ready:
            return
        self.ready.add(sub_id)
        t.ring.append(sub_id)
        if not t.in_ring and t.held < self.max_per_tenant:
            t.in_ring = True
            self.ring.append(tenant)

    def _forget(self, tenant: str, t: _Tenant) -> None:
        # only a tenant holding nothing: its subscriptions hold nothing either, so any of
        # them with deliveries waiting would be in its ring, and none is
        if self.tenants.get(tenant) is t:
            del self.tenants[tenant]

    def _grant(self) -> None:
        """Hand free slots to the next tenants and subscriptions in turn."""
        while self.free > 0 and self.ring:
            tenant = self.ring.popleft()
            t = self.tenants[tenant]
            t.in_ring = False
            granted = False
            while t.ring and not granted:
                sub_id = t.ring.popleft()
                queue = self.waiters[sub_id]
                while queue:
                    fut = queue.popleft()
                    if not fut.done():  # a cancelled waiter's future is done: skipped
                        fut.set_result(None)
                        granted = True
                        break
                held = self.held.get(sub_id, 0) + (1 if granted else 0)
                if granted:
                    self.free -= 1
                    self.held[sub_id] = held
                    t.held += 1
                if not queue:
                    del self.waiters[sub_id]
                    self.ready.discard(sub_id)
                elif held < self.max_per_subscription:
                    t.ring.append(sub_id)  # the end of its tenant's turn order
                else:
                    self.ready.discard(sub_id)  # at its cap: back in the ring on a release
            if t.ring and t.held < self.max_per_tenant:
                t.in_ring = True
                self.ring.append(tenant)
            elif t.held == 0 and not t.ring:  # only cancelled waiters were left
                self._forget(tenant, t)
