"""Shared test set-up.

aioresponses 0.7.9 builds ``ClientResponse`` objects without the ``stream_writer`` argument that
aiohttp 3.14 requires (pnuckowski/aioresponses#289, open). aiohttp 3.14 is a security release, so
we keep it and default the argument here. Drop this shim when aioresponses is fixed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aioresponses.core
from aiohttp import ClientResponse


class _CompatClientResponse(ClientResponse):
    def __init__(self, *args: Any, stream_writer: Any = None, **kwargs: Any) -> None:
        if stream_writer is None:
            stream_writer = SimpleNamespace(output_size=0)
        super().__init__(*args, stream_writer=stream_writer, **kwargs)


aioresponses.core.ClientResponse = _CompatClientResponse  # type: ignore[misc]
