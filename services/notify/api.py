"""The HTTP surface of notify (FastAPI): subscriptions CRUD (each with its delivery
health: failing since when, deliveries waiting, the next attempt), disabling one and
enabling it again, secret rotation, the enriched stream as Server-Sent Events and the
short-lived tokens a browser opens it with, health and metrics. Errors are RFC 9457
problem+json. The ``anting`` CLI's subscription commands and ``anting subscribe`` are
clients of these routes (``services/notify/client.py``).

Who may do what (keys: ``ANTING_API_KEYS``, ``ANTING_API_KEYS_FILE``; see
``shared/access.py``): the subscription routes need ``subscriptions:manage`` and act on the
key's tenant's subscriptions only — another tenant's id is answered exactly as an unknown
one (404, the same body), and the list holds the tenant's own; an ``admin`` key acts on
every tenant's. ``/v1/stream`` needs ``stream:read``, from a key or from a stream token in
``?access_token=`` (``POST /v1/stream-tokens``); a stream opened with a token ends when the
token expires. Creating, deleting, rotating, enabling, disabling and issuing tokens count
against the key's rate (``ANTING_RATE_LIMIT``, 429 beyond it). Open streams are capped
per key and per tenant (``ANTING_NOTIFY_MAX_STREAMS_PER_KEY``, ``_PER_TENANT``; 429 with
``Retry-After`` beyond them): see :class:`StreamCaps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from services.notify import sse
from services.notify.channels.log import log_file_refusal, tenant_log_dir
from services.notify.channels.smtp import smtp_address
from services.notify.egress import apprise_loaded, channel_refusal
from services.notify.matching import decode, match
from services.notify.settings import NotifySettings
from services.notify.store import SubscriptionStore
from services.notify.tail import Follower, SharedTail, TailUnavailable
from shared.access import STREAM_READ, SUBSCRIPTIONS_MANAGE, Principal, StreamTokens
from shared.events import error_paths, record_event_bytes
from shared.http import (
    health_router,
    install_request_metrics,
    media_type,
    openapi_as_served,
    problem,
    problem_responses,
    require_scope,
    serve_asyncapi,
    use_api_keys,
    use_cors,
    use_stream_tokens,
)
from shared.kafka import make_consumer
from shared.subscriptions import Filter, SubscriptionRequest
from shared.topics import ENRICHED_EVENTS

SSE_HEARTBEAT_SECONDS = 15.0
SSE_RESUME_POINTS = 10_000  # events this process remembers a stream position for


class ResumePoints:
    """Where each stream stood right after it sent an event: the event's (source, id) →
    the next offset of every partition. A client that reconnects with ``Last-Event-ID``
    (browsers' EventSource does it by itself) resumes there, so it misses nothing while
    away. The SSE ``id`` names the event by both (``sse.event_id``): two publishers'
    events with one id are two resume points. The positions live here, in this process,
    for the last ``SSE_RESUME_POINTS`` events sent on any stream."""

    def __init__(self, size: int = SSE_RESUME_POINTS) -> None:
        self.size = size
        self.points: OrderedDict[tuple[str, str], dict[int, int]] = OrderedDict()

    def note(self, source: str, event_id: str, positions: dict[int, int]) -> None:
        """Remember ``positions`` as where a stream stood right after sending (source, id)."""
        key = (source, event_id)
        self.points[key] = dict(positions)
        self.points.move_to_end(key)
        while len(self.points) > self.size:
            self.points.popitem(last=False)

    def get(self, last_event_id: str | None) -> dict[int, int] | None:
        """The positions after the event a ``Last-Event-ID`` value names, if remembered."""
        key = sse.parse_event_id(last_event_id)
        return self.points.get(key) if key is not None else None


def filter_from_query(
    types: list[str], kinds: list[str], organizations: list[str], sectors: list[str], cities: list[str]
) -> Filter:
    """Query parameters (repeated or comma-separated) → a validated filter."""
    def split(values: list[str]) -> list[str]:
        return [v.strip() for value in values for v in value.split(",") if v.strip()]

    doc = {"types": split(types), "kinds": split(kinds), "organizations": split(organizations),
           "sectors": split(sectors), "cities": split(cities)}
    return Filter.model_validate_json(orjson.dumps(doc))


#: ``Retry-After`` (seconds) of a stream refused for a cap: streams close at no set time.
STREAM_RETRY_AFTER_SECONDS = 10


class StreamCaps:
    """How many SSE streams each API key and each tenant holds open here, and the caps on
    both. A stream opened with a stream token counts for its tenant only (a token names no
    key), as does every stream when keys are off (all are the ``admin`` tenant's then)."""

    def __init__(self, per_key: int, per_tenant: int) -> None:
        self.per_key = per_key
        self.per_tenant = per_tenant
        self.keys: Counter[str] = Counter()
        self.tenants: Counter[str] = Counter()

    def open(self, who: Principal) -> Callable[[], None] | str:
        """Count a new stream of ``who``: returns its release (call it once the stream ends;
        a second call does nothing), or, when a cap is reached, why it is refused."""
        if who.key_id is not None and self.keys[who.key_id] >= self.per_key:
            return f"this key has {self.per_key} streams open, the most it may"
        if self.tenants[who.tenant] >= self.per_tenant:
            return f"tenant {who.tenant} has {self.per_tenant} streams open, the most it may"
        if who.key_id is not None:
            self.keys[who.key_id] += 1
        self.tenants[who.tenant] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            for counter, name in ((self.keys, who.key_id), (self.tenants, who.tenant)):
                if name is None:
                    continue
                counter[name] -= 1
                if counter[name] <= 0:
                    del counter[name]  # no entry left behind per key that ever streamed

        return release


async def _released(events: AsyncIterator[bytes], release: Callable[[], None]) -> AsyncIterator[bytes]:
    """``events``, with ``release`` called once the stream ends (finished, failed, or the
    client gone)."""
    try:
        async for chunk in events:
            yield chunk
    finally:
        release()


#: The longest a stream token may live (``ANTING_STREAM_TOKEN_TTL_SECONDS`` is at most this).
MAX_STREAM_TOKEN_TTL_SECONDS = 3600

#: The longest grace period a rotation may give the previous secret: a year.
MAX_GRACE_SECONDS = 366 * 24 * 3600

#: ``disabled_reason`` of a subscription a person disabled (``POST .../disable``).
DISABLED_BY_REQUEST = "disabled on request"


def _request_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`SubscriptionRequest` with what its validator checks
    and JSON Schema can say too: a retry policy names exactly one of ``preset`` and
    ``delays_seconds`` (their sum, at most four days, it cannot)."""
    schema = SubscriptionRequest.model_json_schema()
    schema["$defs"]["RetryPolicy"]["oneOf"] = [
        {"required": ["preset"], "properties": {"preset": {"type": "string"},
                                                "delays_seconds": {"type": "null"}}},
        {"required": ["delays_seconds"], "properties": {"delays_seconds": {"type": "array"},
                                                        "preset": {"type": "null"}}},
    ]
    return schema


_MANAGE = require_scope(SUBSCRIPTIONS_MANAGE)
_MANAGE_LIMITED = require_scope(SUBSCRIPTIONS_MANAGE, limited=True)
Manager = Annotated[Principal, Depends(_MANAGE)]
LimitedManager = Annotated[Principal, Depends(_MANAGE_LIMITED)]
StreamReader = Annotated[Principal, Depends(require_scope(STREAM_READ, tokens=True))]
TokenIssuer = Annotated[Principal, Depends(require_scope(STREAM_READ, limited=True))]

_TOKEN_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["token", "expires_at", "expires_in"],
    "properties": {"token": {"type": "string"},
                   "expires_at": {"type": "string", "format": "date-time"},
                   "expires_in": {"type": "integer", "description": "seconds"}}}


def _tenant(who: Principal) -> str | None:
    """The tenant whose subscriptions ``who`` acts on: its own; ``None`` (all) for an admin."""
    return None if who.admin else who.tenant


def create_app(settings: NotifySettings, store: SubscriptionStore,
               ready: Callable[[], Awaitable[tuple[bool, str]]] | None = None,
               tokens: StreamTokens | None = None) -> FastAPI:
    """The notify API over ``store``; stream tokens are signed by ``tokens`` (by default
    with ``ANTING_STREAM_TOKEN_SECRET``, else a secret made for this process). Raises
    :class:`shared.access.KeyFileError` or ``OSError`` for a bad key file."""
    app = FastAPI(title="Anting notify", version="0.1.0",
                  description="Filtered subscriptions delivered by webhook, email, chat and log.")
    use_api_keys(app, settings.api_keys, keys_file=settings.api_keys_file or None,
                 rate_limit=settings.rate_limit)
    install_request_metrics(app, "notify")
    tokens = tokens or StreamTokens(settings.stream_token_secret or None)
    use_stream_tokens(app, tokens)
    use_cors(app, settings.cors_origins)

    async def _ready() -> tuple[bool, str]:
        if ready is not None:
            return await ready()
        return store.view.ready.is_set(), "subscriptions loaded" if store.view.ready.is_set() else "starting"

    app.include_router(health_router(_ready))
    serve_asyncapi(app, settings)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = [{"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return problem(422, "invalid request", errors=errors)

    @app.post(
        "/v1/subscriptions", status_code=201, tags=["subscriptions"],
        summary="Create a subscription; a webhook's signing secret is returned once, here",
        description="It belongs to the tenant of the key that creates it.",
        responses=problem_responses(400, 401, 403, 415, 422, 429, 503),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": _request_schema()}}}},
    )
    async def create(request: Request, who: LimitedManager) -> Response:
        ctype = media_type(request.headers.get("content-type"))
        if ctype not in ("application/json", ""):
            return problem(415, f"expected application/json, got {ctype}")
        body = await request.body()
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return problem(400, f"malformed JSON: {exc}")
        try:
            req = SubscriptionRequest.model_validate_json(body)
        except ValidationError as exc:
            return problem(422, "the subscription is not valid", errors=error_paths(exc))
        if req.channel.type in ("webhook", "apprise"):
            # the egress policy delivery applies (egress.py); the first apprise URL loads
            # apprise's plugins, off the event loop
            policy = settings.egress()
            if req.channel.type == "apprise" and not apprise_loaded():
                why = await asyncio.to_thread(channel_refusal, req.channel, policy)
            else:
                why = channel_refusal(req.channel, policy)
            if why:
                return problem(422, f"{req.channel.type} URL refused",
                               errors=[{"path": "channel.url", "message": why}])
        elif req.channel.type == "email":
            # stored as they are sent: domains in A-labels (a relay without SMTPUTF8 takes them)
            try:
                to = [smtp_address(a) for a in req.channel.to]
            except ValueError as exc:
                return problem(422, "email address refused", errors=[{"path": "channel.to", "message": str(exc)}])
            req = req.model_copy(update={"channel": req.channel.model_copy(update={"to": to})})
        elif req.channel.type == "log":
            why = log_file_refusal(tenant_log_dir(settings.log_dir, who.tenant), req.channel.path)
            if why:
                return problem(422, "log file refused", errors=[{"path": "channel.path", "message": why}])
        try:
            sub, secret = await store.create(req, who.tenant)
        except Exception as exc:
            return problem(503, f"could not store the subscription: {type(exc).__name__}")
        doc = store.view_of(sub)
        if secret:
            doc["secret"] = secret
        return JSONResponse(doc, status_code=201, headers={"location": f"/v1/subscriptions/{sub.id}"})

    health_doc = ("`delivery` shows its delivery health: `failing_since` (the first failure after "
                  "the last success, null when not failing), `last_failure_at`, `last_error`, "
                  "`waiting` (deliveries waiting for a retry) and `next_attempt_at` (null while disabled).")

    @app.get("/v1/subscriptions", tags=["subscriptions"], summary="List subscriptions",
             description="The key's tenant's subscriptions (an admin key's: every tenant's). "
                         + health_doc, responses=problem_responses(401, 403))
    async def list_all(who: Manager) -> dict[str, Any]:
        return {"subscriptions": store.views(_tenant(who))}

    @app.get("/v1/subscriptions/{sub_id}", tags=["subscriptions"],
             summary="One subscription (never its secrets)", description=health_doc,
             responses=problem_responses(401, 403, 404))
    async def get_one(sub_id: str, who: Manager) -> Response:
        sub = store.owned(sub_id, _tenant(who))
        if sub is None:
            return problem(404, f"no subscription {sub_id}")
        return JSONResponse(store.view_of(sub))

    @app.post("/v1/subscriptions/{sub_id}/enable", tags=["subscriptions"],
              summary="Enable a disabled subscription again; its waiting retries resume",
              description="Disabled by a 410 or by failing for days (`disabled_reason` says which). "
                          "Its retries still scheduled are attempted at once, new events match it "
                          "again, and its failures so far no longer count towards disabling it. "
                          "Enabling one that is not disabled changes nothing.",
              responses=problem_responses(401, 403, 404, 429, 503))
    async def enable(sub_id: str, who: LimitedManager) -> Response:
        if store.owned(sub_id, _tenant(who)) is None:
            return problem(404, f"no subscription {sub_id}")
        try:
            out = await store.enable(sub_id)
        except Exception as exc:
            return problem(503, f"could not store the subscription: {type(exc).__name__}")
        if out is None:
            return problem(404, f"no subscription {sub_id}")
        return JSONResponse(store.view_of(out[0]))

    @app.post("/v1/subscriptions/{sub_id}/disable", tags=["subscriptions"],
              summary="Disable a subscription: nothing more is sent until it is enabled again",
              description="New events no longer match it and its retries wait (they are kept, "
                          "and resume when it is enabled). `disabled_reason` says it was "
                          "disabled through the API. Disabling one that is disabled already "
                          "changes nothing.",
              responses=problem_responses(401, 403, 404, 429, 503))
    async def disable(sub_id: str, who: LimitedManager) -> Response:
        if store.owned(sub_id, _tenant(who)) is None:
            return problem(404, f"no subscription {sub_id}")
        try:
            await store.disable(sub_id, DISABLED_BY_REQUEST)
        except Exception as exc:
            return problem(503, f"could not store the subscription: {type(exc).__name__}")
        sub = store.get(sub_id)
        if sub is None:  # deleted meanwhile
            return problem(404, f"no subscription {sub_id}")
        return JSONResponse(store.view_of(sub))

    @app.delete("/v1/subscriptions/{sub_id}", status_code=204, tags=["subscriptions"],
                summary="Delete a subscription", responses=problem_responses(401, 403, 404, 429, 503))
    async def delete(sub_id: str, who: LimitedManager) -> Response:
        if store.owned(sub_id, _tenant(who)) is None or not await store.delete(sub_id):
            return problem(404, f"no subscription {sub_id}")
        return Response(status_code=204)

    @app.post("/v1/subscriptions/{sub_id}/rotate-secret", tags=["subscriptions"],
              summary="A new webhook secret (shown once); the previous one keeps signing for a grace period",
              responses=problem_responses(401, 403, 404, 429, 503))
    async def rotate(sub_id: str, who: LimitedManager,
                     grace_seconds: Annotated[int | None, Query(ge=0, le=MAX_GRACE_SECONDS)] = None) -> Response:
        if store.owned(sub_id, _tenant(who)) is None:
            return problem(404, f"no webhook subscription {sub_id}")
        try:
            out = await store.rotate_secret(
                sub_id, settings.secret_grace_seconds if grace_seconds is None else grace_seconds)
        except Exception as exc:  # the broker away or refusing: as create and enable answer
            return problem(503, f"could not store the subscription: {type(exc).__name__}")
        if out is None:
            return problem(404, f"no webhook subscription {sub_id}")
        sub, secret = out
        return JSONResponse({**store.view_of(sub), "secret": secret,
                             "previous_secret_expires_at": sub.previous_secrets_expire_at.isoformat()
                             if sub.previous_secrets_expire_at else None})

    resume_points = ResumePoints()
    # one Kafka reader for every stream of this process; the caller stops it
    app.state.stream_tail = tail = SharedTail(settings)
    app.state.stream_caps = caps = StreamCaps(settings.max_streams_per_key, settings.max_streams_per_tenant)
    longest = settings.stream_token_ttl_seconds

    @app.post("/v1/stream-tokens", tags=["stream"],
              summary="A short-lived token that opens the stream from a browser (`?access_token=`)",
              description="For an `EventSource`, which cannot send an `Authorization` header: a "
                          "page's own back end, holding a key with `stream:read`, asks for a "
                          "token and hands it to the page. The token grants `stream:read` of the "
                          f"key's tenant only, for `ttl_seconds` ({longest} by default and at "
                          "most: a longer ask is cut to it), and only on `GET /v1/stream`; a stream it opened ends when it "
                          "expires.",
              responses={200: {"description": "the token",
                               "content": {"application/json": {"schema": _TOKEN_SCHEMA}}},
                         **problem_responses(401, 403, 422, 429)})
    async def stream_token(
        who: TokenIssuer,
        ttl_seconds: Annotated[int | None, Query(ge=1, le=MAX_STREAM_TOKEN_TTL_SECONDS,
                                                 description="seconds")] = None,
    ) -> Response:
        ttl = min(ttl_seconds or longest, longest)  # capped by the setting
        token, expires = tokens.issue(who, ttl)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return JSONResponse({"token": token, "expires_at": at, "expires_in": ttl},
                            headers={"cache-control": "no-store"})

    @app.get("/v1/stream", tags=["stream"],
             summary="The enriched stream as Server-Sent Events, filtered like a subscription",
             description="`id` is the event's source and id, percent-encoded and joined by a space; "
                         "reconnecting with `Last-Event-ID` resumes right after that event when this "
                         "server sent it lately, else from `from`. Needs `stream:read`: a key, or "
                         "`access_token` from `POST /v1/stream-tokens` (the stream ends when the "
                         "token expires; a browser's EventSource then gets 401 and stops). A key, "
                         "and a tenant, may hold a limited number of streams open at once "
                         "(429 with `Retry-After` beyond it).",
             responses={200: {"content": {"text/event-stream": {}}}, **problem_responses(401, 403, 422, 429)},
             openapi_extra={"parameters": [{
                 "name": "access_token", "in": "query", "required": False,
                 "schema": {"type": "string"},
                 "description": "a stream token, for clients that cannot send Authorization"}]})
    async def stream(
        request: Request,
        who: StreamReader,
        types: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
        kinds: Annotated[list[str], Query()] = [],  # noqa: B006
        organizations: Annotated[list[str], Query()] = [],  # noqa: B006
        sectors: Annotated[list[str], Query()] = [],  # noqa: B006
        cities: Annotated[list[str], Query()] = [],  # noqa: B006
        from_: Annotated[str, Query(alias="from", pattern="^(latest|earliest)$")] = "latest",
    ) -> Response:
        try:
            flt = filter_from_query(types, kinds, organizations, sectors, cities)
        except ValidationError as exc:
            return problem(422, "invalid filter", errors=error_paths(exc))
        last_id = request.headers.get("last-event-id")
        release = caps.open(who)
        if isinstance(release, str):
            return problem(429, release, headers={"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)})
        events = _released(sse_events(settings, flt, from_, request, resume_points, last_id,
                                      until=who.expires_at, tail=tail), release)
        # a response dropped before its body was started never runs the generator's
        # finally: released when the generator is collected then
        weakref.finalize(events, release)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    openapi_as_served(app)
    return app


async def sse_events(settings: NotifySettings, flt: Filter, start: str, request: Request,
                     resume_points: ResumePoints | None = None, last_id: str | None = None,
                     until: float | None = None, tail: SharedTail | None = None) -> AsyncIterator[bytes]:
    """Each matching enriched event as one SSE message (``id`` = the event's source and id,
    see :func:`services.notify.sse.event_id`; ``event`` = type; ``data`` = the event and
    its ``reason`` as one line of JSON), from ``start`` (latest or earliest) — or, when
    ``last_id`` names an event this process sent, from right after it. Every line is
    written by :mod:`services.notify.sse`, so no value in an event can add one. With
    ``until`` (Unix seconds: a stream token's expiry) the stream ends then, so a token
    opens a stream no longer than it lives; a browser reconnecting gets the 401 of the
    expired token.

    Live events come from ``tail``, the reader shared by this process's streams (one of
    its own, stopped at the end, when ``None``); events before the reader's position (a
    resume, ``earliest``) are read first by a consumer of this stream's own, which is
    closed at the hand-over (:mod:`services.notify.tail`). The stream ends with a comment
    saying why when it falls too far behind or the shared reader stops or cannot start."""
    own_tail = tail is None
    shared = tail if tail is not None else SharedTail(settings)
    points = resume_points or ResumePoints(0)
    resume = points.get(last_id)
    try:
        follower = await shared.join()
    except TailUnavailable as exc:
        yield sse.comment(f"the stream cannot read events now: {exc}")
        if own_tail:
            await shared.stop()
        return
    try:
        shown = "".join(c for c in (last_id or "") if c.isprintable())[:200]  # one comment line
        if resume is not None:
            yield sse.comment(f"resuming after {shown}")
        elif last_id:
            yield sse.comment(f"{shown} is not an event this server sent lately; from {start}")
        yield sse.comment("connected")
        # every partition's position (the next offset this stream sends from), so a resume
        # point names all of them; the shared reader's where nothing earlier is asked for
        positions = dict(follower.start)
        if resume is not None:
            # a resume point past the reader's (never made by this process's reader):
            # nothing before it is sent again
            positions = {p: max(pos, resume.get(p, pos)) for p, pos in positions.items()}
        idle = 0.0
        behind = [p for p, pos in follower.start.items()
                  if (resume[p] < pos if resume is not None and p in resume else start == "earliest")]
        if behind:
            async with contextlib.aclosing(
                    _backlog(settings, flt, start, resume, follower, positions, points)) as backlog:
                async for out in backlog:
                    if await request.is_disconnected():
                        return
                    if until is not None and time.time() >= until:
                        yield sse.comment("the stream token expired")
                        return
                    if out is None:
                        idle += 0.5
                        if idle >= SSE_HEARTBEAT_SECONDS:
                            idle = 0.0
                            yield sse.comment("keep-alive")
                    else:
                        idle = 0.0
                        yield out
                    if follower.ended.is_set():
                        # the queue is no longer whole: taking from it would skip events
                        yield sse.comment(follower.reason)
                        return
        while not await request.is_disconnected():
            if until is not None and time.time() >= until:
                yield sse.comment("the stream token expired")
                return
            record = await follower.next(timeout=0.5)
            if record is None:
                if follower.ended.is_set():
                    yield sse.comment(follower.reason)
                    return
                idle += 0.5
                if idle >= SSE_HEARTBEAT_SECONDS:
                    idle = 0.0
                    yield sse.comment("keep-alive")
                continue
            idle = 0.0
            if record.offset < positions.get(record.partition, 0):
                continue  # sent already, from the backlog
            positions[record.partition] = record.offset + 1
            out = _as_message(record, flt, positions, points)
            if out is not None:
                yield out
    finally:
        shared.leave(follower)
        if own_tail:
            await shared.stop()


async def _backlog(settings: NotifySettings, flt: Filter, start: str, resume: dict[int, int] | None,
                   follower: Follower, positions: dict[int, int], points: ResumePoints,
                   ) -> AsyncGenerator[bytes | None]:
    """The messages before ``follower.start`` (the shared reader's position when this
    stream joined), read by a consumer of the stream's own from ``resume`` (else from
    ``start``), updating ``positions``; ``None`` every 0.5 s without one, so the caller
    can check on its client. Ends once every partition reached ``follower.start``."""
    topic = settings.topic(ENRICHED_EVENTS)
    target = follower.start
    consumer = make_consumer(settings, group_id=None, auto_offset_reset=start)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(target)]
        consumer.assign(tps)
        for tp in tps:
            if resume is not None and tp.partition in resume:
                consumer.seek(tp, resume[tp.partition])
            elif start == "earliest":
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, target[tp.partition])
        for tp in tps:
            positions[tp.partition] = await consumer.position(tp)
        while True:
            behind = [tp for tp in tps if positions[tp.partition] < target[tp.partition]]
            if not behind:
                return
            consumer.pause(*[tp for tp in tps if tp not in behind])  # no read past the hand-over
            batch = await consumer.getmany(*behind, timeout_ms=500, max_records=500)
            sent = False
            for records in batch.values():
                for r in records:
                    positions[r.partition] = r.offset + 1
                    out = _as_message(r, flt, positions, points)
                    if out is not None:
                        sent = True
                        yield out
            for tp in behind:
                # past control and aborted records too (read_committed)
                positions[tp.partition] = max(positions[tp.partition], await consumer.position(tp))
            if not sent:
                yield None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(consumer.stop())


def _as_message(r: ConsumerRecord[Any, Any], flt: Filter, positions: dict[int, int],
                points: ResumePoints) -> bytes | None:
    """The SSE message of record ``r`` when its event matches ``flt`` (noting ``positions``
    as the resume point after it), else ``None`` (no match, or not an event)."""
    try:
        raw = record_event_bytes(r.value, r.headers)
        event = decode(raw)
    except ValueError:
        return None
    reasons = match(event, flt)
    if reasons is None:
        return None
    doc = {**orjson.loads(raw), "reason": reasons}  # the event as sent
    # compact JSON: one line, its CR and LF escaped by JSON
    out = sse.message(orjson.dumps(doc), id=sse.event_id(event["source"], event["id"]),
                      event=event["type"])
    points.note(event["source"], event["id"], positions)
    return out


__all__ = ["DISABLED_BY_REQUEST", "MAX_GRACE_SECONDS", "MAX_STREAM_TOKEN_TTL_SECONDS", "SSE_HEARTBEAT_SECONDS", "SSE_RESUME_POINTS",
           "STREAM_RETRY_AFTER_SECONDS", "ResumePoints", "StreamCaps", "create_app",
           "filter_from_query", "sse_events"]
