"""URL paths: the segment rule for model names and versions, and route templates.

TF Serving's ``/v1/models/{m}:predict`` puts a colon right after the name, so a name
segment must stop at ':' (else ``GET /v1/models/{m}`` would also match the predict
URL and answer 405 with the wrong ``Allow``). FastAPI's routes use the rule through the
``segment`` convertor registered here; servekit's inference router compiles the same
templates itself (``compile_template``).
"""

from __future__ import annotations

import re

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import Scope


class SegmentConvertor(Convertor[str]):
    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", SegmentConvertor())

# What each convertor a servekit template may use matches (Starlette's ``str``, the
# default, is any one path segment).
CONVERTOR_REGEX = {"str": "[^/]+", "segment": SegmentConvertor.regex}
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?}")


def compile_template(template: str) -> re.Pattern[str]:
    """A route template (``/v1/models/{model_name:segment}:predict``) as the pattern a
    whole path must match, one named group per parameter: the paths Starlette's
    router matches for the same template (tests/test_router.py checks they agree)."""
    parts: list[str] = []
    end = 0
    for m in _PARAM.finditer(template):
        name, convertor = m.group(1), m.group(2) or "str"
        if convertor not in CONVERTOR_REGEX:
            raise ValueError(f"unknown convertor {convertor!r} in {template!r}")
        parts += [re.escape(template[end : m.start()]), f"(?P<{name}>{CONVERTOR_REGEX[convertor]})"]
        end = m.end()
    parts.append(re.escape(template[end:]))
    return re.compile("^" + "".join(parts) + "$")


def route_path(scope: Scope) -> str:
    """The path routes match: the request's path without the app's root path (servers
    such as uvicorn with ``--root-path`` put it in front of the path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path
