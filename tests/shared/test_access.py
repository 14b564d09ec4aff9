"""shared.access and its FastAPI wiring without a broker: key files, hashing, scopes, 401
against 403, stream tokens on a fake clock, the rate limit and its 429, and the
``access_token`` taken out of the query before anything logs it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from shared.access import (
    ADMIN_TENANT,
    OPEN,
    ApiKeys,
    KeyFileError,
    Principal,
    RateLimit,
    StreamTokens,
    TokenError,
    client_key,
    hash_key,
    key_line,
    new_key,
    parse_keys_file,
)
from shared.http import (
    MoveAccessToken,
    redact_access_token,
    require_scope,
    use_api_keys,
    use_stream_tokens,
)

ACME = new_key()
GLOBEX = new_key()
FILE = f"""# tenants' keys
{hash_key(ACME)} acme subscriptions:manage,stream:read

{hash_key(GLOBEX)}   globex   events:publish   # trailing comment
"""


def test_a_key_file_gives_each_hash_its_tenant_and_scopes() -> None:
    keys = parse_keys_file(FILE)
    assert keys[hash_key(ACME)] == Principal("acme", frozenset({"subscriptions:manage", "stream:read"}),
                                             hash_key(ACME))
    assert keys[hash_key(GLOBEX)].tenant == "globex"
    assert keys[hash_key(GLOBEX)].scopes == frozenset({"events:publish"})
    assert len(keys) == 2


@pytest.mark.parametrize(("line", "why"), [
    ("abc acme stream:read", "SHA-256"),
    (f"{hash_key('x')} acme", "expected"),
    (f"{hash_key('x')} acme stream:write", "unknown scope 'stream:write'"),
    (f"{hash_key('x')} Acme stream:read", "tenant 'Acme'"),
    (f"{hash_key('x')} acme ,", "no scope"),
])
def test_a_bad_line_is_refused_naming_file_and_line(line: str, why: str) -> None:
    with pytest.raises(KeyFileError) as caught:
        parse_keys_file(f"# first\n{line}\n", "keys.txt")
    assert str(caught.value).startswith("keys.txt line 2: ") and why in str(caught.value)


def test_a_hash_given_twice_is_refused() -> None:
    line = f"{hash_key('x')} acme stream:read\n"
    with pytest.raises(KeyFileError, match=r"line 2: .*earlier line"):
        parse_keys_file(line + line)


def test_plain_keys_are_admin_keys_kept_only_as_hashes(tmp_path: Path) -> None:
    """ANTING_API_KEYS' keys are the admin tenant's with every scope; the plain key is not
    kept anywhere in the object, only its SHA-256."""
    path = tmp_path / "keys"
    path.write_text(FILE)
    keys = ApiKeys.load(" plain-one , ", str(path))
    admin = keys.principal("Bearer plain-one")
    assert admin is not None and admin.tenant == ADMIN_TENANT and admin.admin
    assert admin.may("events:publish") and admin.sees("acme")
    assert "plain-one" not in repr(keys.by_hash) and hash_key("plain-one") in keys.by_hash
    acme = keys.principal(f"bearer {ACME}")
    assert acme is not None and acme.tenant == "acme"
    assert acme.may("stream:read") and not acme.may("events:publish") and not acme.sees("globex")
    for header in (None, "", f"Basic {ACME}", "Bearer ", "Bearer nope", ACME):
        assert keys.principal(header) is None
    assert ApiKeys.parse("").principal(None) is OPEN and not ApiKeys.parse(",").enabled


def test_key_line_round_trips_through_the_file() -> None:
    key = new_key()
    assert key.startswith("ak_") and len(key) == 46 and new_key() != key
    line = key_line(key, "acme", ["stream:read", "subscriptions:manage"])
    assert line == f"{hash_key(key)} acme stream:read,subscriptions:manage"
    assert ApiKeys(parse_keys_file(line)).principal(f"Bearer {key}") is not None
    with pytest.raises(ValueError, match="unknown scope"):
        key_line(key, "acme", ["everything"])


def test_client_key_prefers_the_own_key() -> None:
    assert client_key({"ANTING_API_KEY": " mine ", "ANTING_API_KEYS": "a,b"}) == "mine"
    assert client_key({"ANTING_API_KEYS": " ,a,b"}) == "a"
    assert client_key({}) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_stream_tokens_carry_the_tenant_and_expire() -> None:
    clock = Clock()
    tokens = StreamTokens("s3cret", clock=clock)
    acme = Principal("acme", frozenset({"subscriptions:manage", "stream:read"}), "h")
    token, expires = tokens.issue(acme, 300)
    assert expires == clock.now + 300
    got = tokens.verify(token)
    assert got.tenant == "acme" and got.scopes == frozenset({"stream:read"})  # stream:read alone
    assert got.key_id is None and got.expires_at == expires
    clock.now += 299.5
    tokens.verify(token)
    clock.now += 0.5
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token)
    # another secret's token, a changed payload, garbage: not signed here
    other, _ = StreamTokens("other", clock=clock).issue(acme, 300)
    head, _, sig = token.rpartition(".")
    for forged in (other, head + "x." + sig, "nonsense", ""):
        with pytest.raises(TokenError, match="not one this server signed"):
            tokens.verify(forged)
    assert StreamTokens(None).per_process and not tokens.per_process


def test_the_rate_limit_is_per_key_and_says_when_to_retry() -> None:
    limit = RateLimit("3/second")
    assert [limit.hit("a") for _ in range(3)] == [None, None, None]
    wait = limit.hit("a")
    assert wait is not None and 1 <= wait <= 2 and wait == int(wait)
    assert limit.hit("b") is None  # another key is counted apart
    time.sleep(2.05)  # a sliding window: the previous second still weighs until it has slid by
    assert limit.hit("a") is None
    off = RateLimit("off")
    assert all(off.hit("a") is None for _ in range(1000))
    assert RateLimit.check("100/second") == "100/second"
    with pytest.raises(ValueError, match="not a rate"):
        RateLimit.check("lots")


def _app(keys: str = "", keys_file: str | None = None, rate: str = "off",
         tokens: StreamTokens | None = None) -> FastAPI:
    app = FastAPI()
    use_api_keys(app, keys, keys_file=keys_file, rate_limit=rate)
    if tokens is not None:
        use_stream_tokens(app, tokens)

    @app.post("/v1/publish")
    async def publish(who: Annotated[Principal, Depends(require_scope("events:publish",
                                                                        limited=True))]) -> dict[str, str]:
        return {"tenant": who.tenant}

    @app.get("/v1/stream")
    async def stream(request: Request,
                     who: Annotated[Principal, Depends(require_scope("stream:read", tokens=True))],
                     ) -> dict[str, str]:
        return {"tenant": who.tenant, "query": request.url.query}

    @app.get("/v1/manage")
    async def manage(who: Annotated[Principal, Depends(require_scope("subscriptions:manage"))],
                     ) -> dict[str, str]:
        return {"tenant": who.tenant}

    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_401_without_a_key_403_without_the_scope(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(FILE)
    async with _client(_app("root", str(path))) as client:
        for headers in ({}, {"authorization": "Bearer nope"}):
            r = await client.post("/v1/publish", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.headers["content-type"] == "application/problem+json"
        r = await client.post("/v1/publish", headers={"authorization": f"Bearer {ACME}"})
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 403 and "events:publish" in r.json()["detail"]
        ok = await client.post("/v1/publish", headers={"authorization": f"Bearer {GLOBEX}"})
        assert ok.status_code == 200 and ok.json() == {"tenant": "globex"}
        admin = await client.get("/v1/manage", headers={"authorization": "Bearer root"})
        assert admin.json() == {"tenant": "admin"}


async def test_429_with_retry_after_per_tenant_key_admins_and_open_apis_unlimited(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(FILE)
    globex = {"authorization": f"Bearer {GLOBEX}"}
    async with _client(_app("root", str(path), rate="2/minute")) as client:
        assert [(await client.post("/v1/publish", headers=globex)).status_code for _ in range(3)] == [200, 200, 429]
        r = await client.post("/v1/publish", headers=globex)
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
        assert 1 <= int(r.headers["retry-after"]) <= 120
        root = {"authorization": "Bearer root"}
        assert {(await client.post("/v1/publish", headers=root)).status_code for _ in range(5)} == {200}
    async with _client(_app(rate="1/minute")) as client:  # no key configured: open, not limited
        assert {(await client.post("/v1/publish")).status_code for _ in range(5)} == {200}


async def test_a_stream_token_opens_the_stream_only_and_leaves_no_trace_in_the_query(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(FILE)
    clock = Clock()
    tokens = StreamTokens("k", clock=clock)
    token, _ = tokens.issue(Principal("acme", frozenset({"stream:read"})), 60)
    async with _client(_app("root", str(path), tokens=tokens)) as client:
        r = await client.get("/v1/stream", params={"types": "x", "access_token": token})
        assert r.status_code == 200, r.text
        # the app, and whatever logs the query after the middleware, never sees the token
        assert r.json() == {"tenant": "acme", "query": "types=x"}
        assert (await client.get("/v1/manage", params={"access_token": token})).status_code == 401
        forged = await client.get("/v1/stream", params={"access_token": token[:-2] + "xx"})
        assert forged.status_code == 401 and forged.json()["errors"][0]["path"] == "query.access_token"
        clock.now += 61
        expired = await client.get("/v1/stream", params={"access_token": token})
        assert expired.status_code == 401 and "expired" in expired.json()["detail"]


async def test_the_middleware_moves_only_the_access_token() -> None:
    seen: dict[str, object] = {}

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.update(scope)

    middleware = MoveAccessToken(app)  # type: ignore[arg-type]
    await middleware({"type": "http", "query_string": b"a=1&access_token=t%2Bk&b=2"}, None, None)  # type: ignore[arg-type]
    assert seen["query_string"] == b"a=1&b=2" and seen["anting.access_token"] == "t+k"


def test_redaction_of_urls_and_uvicorn_access_lines(caplog: pytest.LogCaptureFixture) -> None:
    assert redact_access_token("/v1/stream?a=1&access_token=abc.def&b=2") == \
        "/v1/stream?a=1&access_token=[redacted]&b=2"
    app = FastAPI()
    use_api_keys(app, "")
    use_stream_tokens(app, StreamTokens(None))
    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1", "GET",
                    "/v1/stream?access_token=SECRET", "1.1", 200)
    assert "SECRET" not in caplog.text and "access_token=[redacted]" in caplog.text


def test_a_traced_request_keeps_no_token_in_its_span() -> None:
    """The tracing hook overwrites the URL attributes the FastAPI instrumentation set from
    the raw query (it runs outside the middleware that takes the token out)."""
    from opentelemetry.sdk.trace import TracerProvider

    from shared.tracing import _redact_span_url

    span = TracerProvider().get_tracer("t").start_span("GET /v1/stream", attributes={
        "http.target": "/v1/stream?access_token=SECRET", "url.query": "access_token=SECRET&x=1",
        "http.url": "http://h/v1/stream?access_token=SECRET"})
    _redact_span_url(span, {"query_string": b"access_token=SECRET&x=1"})
    assert not any("SECRET" in str(v) for v in (span.attributes or {}).values())
    assert span.attributes is not None and span.attributes["url.query"] == "access_token=[redacted]&x=1"


def test_the_admin_tenant_needs_the_admin_scope() -> None:
    """A key file line naming the tenant 'admin' without the admin scope would own the admin keys' subscriptions."""
    with pytest.raises(KeyFileError, match=r"line 1: the tenant 'admin'"):
        parse_keys_file(f"{hash_key('k' * 32)} admin subscriptions:manage\n")
    assert parse_keys_file(f"{hash_key('k' * 32)} admin admin\n")


def test_an_unknown_scope_lists_the_scopes() -> None:
    with pytest.raises(KeyFileError, match=r"unknown scope 'foo'; scopes are .*stream:read"):
        parse_keys_file(f"{hash_key('k' * 32)} acme foo\n")


def test_a_bad_key_file_is_one_settings_message(tmp_path: Path) -> None:
    """A malformed or missing ANTING_API_KEYS_FILE stops the service with one message, not a traceback."""
    from shared.settings import SettingsError

    bad = tmp_path / "keys.txt"
    bad.write_text("not a line\n")
    for path in (bad, tmp_path / "missing.txt"):
        with pytest.raises(SettingsError, match="ANTING_API_KEYS_FILE"):
            use_api_keys(FastAPI(), None, keys_file=str(path))


def test_keys_new_appends_a_line_the_services_read(tmp_path: Path) -> None:
    """`anting keys new --append` prints the key once and adds its line, even to a file whose
    last line has no newline; the services then know the key, tenant and scopes."""
    import subprocess
    import sys

    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{hash_key('o' * 32)} other stream:read")  # no newline at the end
    got = subprocess.run([str(Path(sys.executable).parent / "anting"), "keys", "new", "--tenant", "acme",
                          "--scopes", "subscriptions:manage,stream:read", "--append", str(keys_file)],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    key = got.stdout.strip().splitlines()[-1].split()[-1]
    assert key not in keys_file.read_text()
    keys = ApiKeys.load(None, str(keys_file))
    who = keys.principal(f"Bearer {key}")
    assert who is not None and who.tenant == "acme" and who.may("stream:read") and not who.may("events:publish")
    assert keys.principal(f"Bearer {'o' * 32}") is not None
