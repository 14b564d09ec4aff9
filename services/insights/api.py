"""The HTTP surface of insights (FastAPI): organization activity, partners and latest
events, the most active organizations, sector activity, the names the catalog lacks;
health, readiness (the table recovered) and metrics. Errors are RFC 9457 problem+json;
every route under ``/v1`` needs a key with the ``insights:read`` scope (or ``admin``) when
keys are set (``ANTING_API_KEYS``, ``ANTING_API_KEYS_FILE``): 401 without one, 403 with a key
of other scopes. What it answers is folded from the whole enriched stream, which belongs to
no tenant, so every such key reads all of it.

Every instance answers every query. A query about one key (an organization, a sector)
is answered by the instance that owns the key's table partition: another instance
forwards it there (faust's ``@app.table_route``, Kafka Streams' interactive queries),
marking it ``X-Anting-Routed`` so that it is forwarded at most once. A ranking asks every
instance for its own top entries (``/v1/_local/...``) and merges them.

Truth or 503: an instance answers from a partition only when it is *servable* there (it
holds the partition in the current assignment, the partition's recovery has completed and
its table is folded in full up to the offset it reports: see ``services.insights.streams``);
otherwise it forwards the query to the owner or answers 503 with ``Retry-After`` and the
reason. Every answer names the position it reflects, ``X-Anting-Position``:
``<partition>=<offset>`` pairs, the ``insights-facts`` offset below which every fact of
that partition is folded (one pair for a key, every partition for a ranking, whose body
also lists ``partitions``). Two answers with the same position are the same answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import httpx
import orjson
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from services.insights.settings import InsightsSettings
from services.insights.state import Entity, Window, entity_key
from services.insights.streams import Insights
from shared.access import INSIGHTS_READ
from shared.http import (
    Problem,
    health_router,
    install_request_metrics,
    openapi_as_served,
    problem,
    problem_responses,
    require_scope,
    use_api_keys,
)

__all__ = ["POSITION", "ROUTED", "SERVED_BY", "create_app", "format_position", "parse_position", "rank"]

ROUTED = "x-anting-routed"
SERVED_BY = "x-anting-served-by"
POSITION = "x-anting-position"

Namespace = Literal["org", "unresolved", "sector", "city"]
WindowQuery = Annotated[Literal["day", "week", "all"], Query(
    description="the current UTC day, the current ISO week (from Monday 00:00 UTC), or all time")]
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many")]
OrgId = Annotated[str, Path(min_length=1, max_length=120, description="catalog id, e.g. anting-town-government")]


def rank(entities: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Rows with a ``total``, most first then by ``id``, without zeros, at most ``limit``."""
    rows = [r for r in entities if r["total"] > 0]
    return sorted(rows, key=lambda r: (-r["total"], r["id"]))[:limit]


def _row(entity: Entity, window: Window, now_ms: int) -> dict[str, Any]:
    act = entity.activity(window, now_ms)
    return {"id": entity.doc["key"].split(":", 1)[1], "name": entity.doc["name"], "total": act["total"],
            "by_type": act["by_type"], "by_kind": act["by_kind"]}


def format_position(position: dict[int, int]) -> str:
    """``{0: 120, 2: 7}`` → ``"0=120,2=7"`` (the ``X-Anting-Position`` header)."""
    return ",".join(f"{p}={o}" for p, o in sorted(position.items()))


def parse_position(header: str) -> dict[int, int]:
    """The ``X-Anting-Position`` header as ``{partition: offset}``; raises ``ValueError``."""
    pairs = (item.split("=", 1) for item in header.split(",") if item)
    return {int(p): int(o) for p, o in pairs}


def _json(body: object, served_by: str, position: dict[int, int]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json",
                    headers={SERVED_BY: served_by, POSITION: format_position(position)})


def create_app(settings: InsightsSettings, insights: Insights) -> FastAPI:
    """The API of one instance over ``insights`` (its faust app and table)."""
    app = FastAPI(title="Anting insights", version="0.1.0",
                  description="Organization activity folded from the enriched stream into faust tables; "
                  "each key answered by the instance that owns it.")
    use_api_keys(app, settings.api_keys, keys_file=settings.api_keys_file or None)
    install_request_metrics(app, "insights")
    client = httpx.AsyncClient(timeout=settings.forward_timeout_seconds)

    async def ready() -> tuple[bool, str]:
        if insights.access.reason is not None:  # the broker refuses it: who may not do what
            return False, insights.access.reason
        if not insights.recovered():
            return False, "recovering the table from the changelog"
        return True, "table recovered, agents running"

    app.include_router(health_router(ready))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = [{"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return problem(422, "invalid request", errors=errors)

    auth = [Depends(require_scope(INSIGHTS_READ))]
    errors = problem_responses(401, 403, 404, 422, 503)

    def unavailable(detail: str) -> Problem:
        return Problem(503, detail, headers={"Retry-After": "1", SERVED_BY: insights.url})

    async def forward(url: str, request: Request) -> Response:
        headers = {ROUTED: insights.url}
        if auth_header := request.headers.get("authorization"):
            headers["authorization"] = auth_header
        target = url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            resp = await client.get(target, headers=headers)
        except httpx.HTTPError as exc:
            raise unavailable(f"the instance owning the key ({url}) did not answer: "
                              f"{type(exc).__name__}") from None
        keep = {k: v for k, v in resp.headers.items() if k in (SERVED_BY, POSITION, "retry-after")}
        return Response(resp.content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type"), headers=keep)

    async def by_owner(key: str, request: Request, answer: Callable[[], Any]) -> Response:
        """Answer ``key``'s query here when this instance owns it, else forward it once."""
        try:
            owner = insights.owner(key)
        except KeyError:
            raise unavailable("no instance owns this key yet (the group is rebalancing)") from None
        if owner != insights.url:
            if request.headers.get(ROUTED):
                raise unavailable("the key moved while the query was forwarded (rebalancing)")
            return await forward(owner, request)
        partition = insights.partition_of(key)
        at = insights.servable(partition)
        if isinstance(at, str):
            raise unavailable(at)
        position = {partition: at}
        try:
            body = answer()  # no await between the position and the answer: one state
        except Problem as exc:  # a 404 is an answer too, true at that position
            exc.headers = {**exc.headers, SERVED_BY: insights.url, POSITION: format_position(position)}
            raise
        return _json(body, insights.url, position)

    def found(key: str, what: str) -> Entity:
        entity = insights.entity(key)
        if entity is None:
            raise Problem(404, f"no enriched event names {what}")
        return entity

    @app.get("/v1/organizations/{org_id}/activity", dependencies=auth, tags=["organizations"],
             summary="Events naming the organization, by type and kind, in a window", responses=errors)
    async def activity(org_id: OrgId, request: Request, window: WindowQuery = "all") -> Response:
        key = entity_key("org", org_id)

        def answer() -> dict[str, Any]:
            entity = found(key, f"organization {org_id!r}")
            return {"organization": org_id, "name": entity.doc["name"],
                    **entity.activity(window, int(time.time() * 1000))}

        return await by_owner(key, request, answer)

    @app.get("/v1/organizations/{org_id}/partners", dependencies=auth, tags=["organizations"],
             summary="Organizations named with it in agreement.signed events, and the latest agreement",
             responses=errors)
    async def partners(org_id: OrgId, request: Request) -> Response:
        key = entity_key("org", org_id)

        def answer() -> dict[str, Any]:
            entity = found(key, f"organization {org_id!r}")
            latest = entity.doc["latest_agreement"]
            if latest is not None:
                latest = {k: latest[k] for k in ("id", "source", "title", "time", "ts", "partners")}
            return {"organization": org_id, "name": entity.doc["name"], "partners": entity.partners(),
                    "latest_agreement": latest}

        return await by_owner(key, request, answer)

    @app.get("/v1/organizations/{org_id}/events", dependencies=auth, tags=["organizations"],
             summary="The latest 50 events naming the organization, newest first", responses=errors)
    async def events(org_id: OrgId, request: Request) -> Response:
        key = entity_key("org", org_id)

        def answer() -> dict[str, Any]:
            entity = found(key, f"organization {org_id!r}")
            return {"organization": org_id, "name": entity.doc["name"], "events": entity.events()}

        return await by_owner(key, request, answer)

    @app.get("/v1/sectors/{sector}/activity", dependencies=auth, tags=["sectors"],
             summary="Events of a sector (agreement sectors and organizations' sectors)", responses=errors)
    async def sector_activity(sector: Annotated[str, Path(min_length=1, max_length=256)], request: Request,
                              window: WindowQuery = "all") -> Response:
        key = entity_key("sector", sector)

        def answer() -> dict[str, Any]:
            entity = found(key, f"sector {sector!r}")
            return {"sector": sector, **entity.activity(window, int(time.time() * 1000))}

        return await by_owner(key, request, answer)

    def local_rows(namespace: Namespace, window: Window, limit: int, now_ms: int
                   ) -> tuple[list[dict[str, Any]], dict[int, int]]:
        """This instance's top ``limit`` over the partitions it holds, and their positions;
        503 when any of them is not servable."""
        if not insights.recovered():
            raise unavailable("recovering the table from the changelog")
        position: dict[int, int] = {}
        for partition in sorted(insights.held_partitions()):
            at = insights.servable(partition)
            if isinstance(at, str):
                raise unavailable(at)
            position[partition] = at
        rows = [_row(e, window, now_ms) for e in insights.local_entities(namespace, set(position))]
        return rank(rows, limit), position

    async def ranking(namespace: Namespace, window: Window, limit: int, request: Request) -> Response:
        """Every instance's top ``limit`` merged: the top ``limit`` of all, when together
        they cover every partition once (else 503)."""
        now_ms = int(time.time() * 1000)
        rows, position = local_rows(namespace, window, limit, now_ms)
        others = sorted(insights.members() - {insights.url})
        params = {"namespace": namespace, "window": window, "limit": str(limit), "now": str(now_ms)}
        headers = {ROUTED: insights.url}
        if auth_header := request.headers.get("authorization"):
            headers["authorization"] = auth_header

        async def ask(url: str) -> tuple[list[dict[str, Any]], dict[int, int]]:
            try:
                resp = await client.get(f"{url}/v1/_local/entities", params=params, headers=headers)
            except httpx.HTTPError as exc:
                raise unavailable(f"instance {url} did not answer: {type(exc).__name__}") from None
            if resp.status_code != 200:
                detail = resp.json().get("detail", "") if resp.headers.get("content-type", "").endswith(
                    "json") else ""
                raise unavailable(f"instance {url} answered {resp.status_code} {detail}".rstrip())
            return list(resp.json()["rows"]), parse_position(resp.headers.get(POSITION, ""))

        for part_rows, part_position in await asyncio.gather(*(ask(u) for u in others)):
            twice = set(part_position) & set(position)
            if twice:  # two instances each believe they hold it: ownership is moving
                raise unavailable(f"partitions {sorted(twice)} answered by two instances (rebalancing)")
            rows.extend(part_rows)
            position.update(part_position)
        missing = sorted(set(range(settings.partitions)) - set(position))
        if missing:
            raise unavailable(f"partitions {missing} are held by no instance that answered (rebalancing)")
        start = None if window == "all" else _row_window(window, now_ms)
        return _json({"window": window, **(start or {"start": None, "end": None}),
                      "partitions": sorted(position), "rows": rank(rows, limit)}, insights.url, position)

    @app.get("/v1/organizations", dependencies=auth, tags=["organizations"],
             summary="The most active organizations in a window, across all instances", responses=errors)
    async def top(request: Request, sort: Annotated[Literal["activity"], Query()] = "activity",
                  window: WindowQuery = "week", limit: Limit = 10) -> Response:
        resp = await ranking("org", window, limit, request)
        return _renamed(resp, "organizations")

    @app.get("/v1/unresolved", dependencies=auth, tags=["organizations"],
             summary="Names no catalog record matched, most frequent first (what to add to the catalog)",
             responses=errors)
    async def unresolved(request: Request, window: WindowQuery = "all", limit: Limit = 50) -> Response:
        return _renamed(await ranking("unresolved", window, limit, request), "names")

    @app.get("/v1/_local/entities", dependencies=auth, tags=["internal"], include_in_schema=False)
    async def local(namespace: Namespace, window: WindowQuery, limit: Limit,
                    now: Annotated[int, Query(ge=0)]) -> Response:
        rows, position = local_rows(namespace, window, limit, now)
        return _json({"rows": rows}, insights.url, position)

    openapi_as_served(app)
    return app


def _row_window(window: Literal["day", "week"], now_ms: int) -> dict[str, int]:
    probe = Entity.new("x:x", "x").activity(window, now_ms)
    return {"start": probe["start"], "end": probe["end"]}


def _renamed(resp: Response, name: str) -> Response:
    body = orjson.loads(resp.body)
    body[name] = body.pop("rows")
    return Response(orjson.dumps(body), media_type="application/json",
                    headers={SERVED_BY: resp.headers.get(SERVED_BY, ""), POSITION: resp.headers.get(POSITION, "")})
