"""URL path segments for model names and versions.

TF Serving's ``/v1/models/{m}:predict`` puts a colon right after the name, so a name
segment must stop at ':' (else ``GET /v1/models/{m}`` would also match the predict
URL and answer 405 with the wrong ``Allow``).
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class SegmentConvertor(Convertor[str]):
    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", SegmentConvertor())
