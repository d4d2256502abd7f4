"""With API keys on, nothing that names the models is served without a key.

In-process: the app's own ASGI entry (servekit's middleware included) through httpx's
ASGITransport, with the lifespan run as a server runs it.
"""

from __future__ import annotations

from conftest import serve_digits as served

KEY = {"X-API-Key": "k1"}
BEARER = {"Authorization": "Bearer k2"}
EXAMPLE = "/docs/examples/digits/v1"


async def test_openapi_and_metrics_need_a_key_when_keys_are_set() -> None:
    async with served(api_keys=["k1", "k2"]) as c:
        guarded = {"/openapi.json": "digits", "/metrics": "digits", EXAMPLE: "instances"}
        for path, shown in guarded.items():
            r = await c.get(path)
            assert r.status_code == 401, (path, r.text)
            assert "missing API key" in r.json()["error"] and "digits" not in r.text
            assert r.headers["www-authenticate"] == "Bearer"
            r = await c.get(path, headers={"X-API-Key": "nope"})
            assert (r.status_code, r.json()) == (401, {"error": "invalid API key"})
            for key in (KEY, BEARER):
                r = await c.get(path, headers=key)
                assert r.status_code == 200 and shown in r.text, path
        # The pages are shells that name no model: a browser's navigation cannot send a
        # key, so they load and ask for one (static/servekit/*-init.js).
        for path in ("/docs", "/redoc", "/docs/assets/servekit/swagger-init.js"):
            r = await c.get(path)
            assert r.status_code == 200 and "digits" not in r.text, path
        # Health stays open for probes.
        for path in ("/v2/health/live", "/v2/health/ready", "/v1/models"):
            want = 401 if path == "/v1/models" else 200
            assert (await c.get(path)).status_code == want, path


async def test_keys_guard_docs_and_metrics_below_a_root_path() -> None:
    async with served(root_path="/api", api_keys=["k1"]) as c:
        assert (await c.get("/api/openapi.json")).status_code == 401
        assert (await c.get("/api/metrics")).status_code == 401
        assert (await c.get("/api/openapi.json", headers=KEY)).status_code == 200


async def test_docs_public_and_metrics_public_open_them_again() -> None:
    async with served(api_keys=["k1"], docs_public=True, metrics_public=True) as c:
        for path in ("/openapi.json", "/metrics", EXAMPLE):
            assert (await c.get(path)).status_code == 200, path
        assert (await c.get("/v1/models/digits")).status_code == 401  # models still guarded


async def test_without_keys_everything_is_open_and_no_scheme_is_declared() -> None:
    async with served() as c:
        assert (await c.get("/metrics")).status_code == 200
        schema = (await c.get("/openapi.json")).json()
    # Only the admin API's own token is declared.
    assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer"}
    declared = [op.get("security") for ops in schema["paths"].values() for op in ops.values()]
    assert {str(d) for d in declared} == {"None", "[{'HTTPBearer': []}]"}


async def test_openapi_declares_the_key_schemes_on_model_operations() -> None:
    async with served(api_keys=["k1"]) as c:
        schema = (await c.get("/openapi.json", headers=KEY)).json()
    schemes = schema["components"]["securitySchemes"]
    assert (schemes["APIKeyBearer"]["type"], schemes["APIKeyBearer"]["scheme"]) == (
        "http",
        "bearer",
    )
    assert schemes["APIKeyHeader"]["type"] == "apiKey"
    assert (schemes["APIKeyHeader"]["in"], schemes["APIKeyHeader"]["name"]) == (
        "header",
        "X-API-Key",
    )
    either = [{"APIKeyBearer": []}, {"APIKeyHeader": []}]
    paths = schema["paths"]
    assert paths["/v1/models/{model_name}:predict"]["post"]["security"] == either
    assert paths["/v2/models/{model_name}/infer"]["post"]["security"] == either
    assert paths["/v2"]["get"]["security"] == either
    assert paths["/metrics"]["get"]["security"] == either
    for open_path in ("/v2/health/live", "/v2/health/ready"):
        assert "security" not in paths[open_path]["get"], open_path
