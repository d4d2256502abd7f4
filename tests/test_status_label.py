"""The HTTP metrics' ``status`` label: the exact code by default, or its class.

prometheus-fastapi-instrumentator groups codes into classes ("5xx") by default, and
dashboards made for it may ask for ``status="5xx"``; ``http_status_label: class`` gives
them that, with fewer series.
"""

from __future__ import annotations

import re

import pytest

from conftest import serve_digits

SERIES = re.compile(
    r'^http_requests_total\{handler="(?P<handler>[^"]*)",method="(?P<method>[A-Z]+)",'
    r'status="(?P<status>[^"]*)"\} (?P<n>\S+)$',
    re.MULTILINE,
)


@pytest.mark.parametrize(
    ("label", "want"), [("code", {"200", "400", "404"}), ("class", {"2xx", "4xx"})]
)
async def test_status_label(label: str, want: set[str]) -> None:
    async with serve_digits(http_status_label=label) as c:
        assert (await c.get("/v1/models/digits")).status_code == 200
        assert (await c.get("/v1/models/nope")).status_code == 404
        r = await c.post("/v1/models/digits:predict", json={"instances": "x"})
        assert r.status_code == 400
        text = (await c.get("/metrics")).text
    statuses = {m["status"] for m in SERIES.finditer(text)}
    assert statuses == want, text
    # The shipped dashboard's error panel selects status=~"[45]..": both forms match.
    assert all(re.fullmatch("[45]..", s) for s in statuses - {"200", "2xx"})
