"""The sandbox web application: every simulated provider on one port."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from kunpay_worker.sandbox.mtn_momo import MtnSandbox

__all__ = ["MTN_KEY", "SandboxConfig", "build_app"]

MTN_KEY = web.AppKey("mtn", MtnSandbox)


@dataclass(frozen=True)
class SandboxConfig:
    # A payment settles (SUCCESSFUL/FAILED) this long after it was registered.
    settle_seconds: float = 1.0
    # The SLOW scenario answers after this long (beyond the worker's provider timeout).
    slow_seconds: float = 60.0
    # MTN sends callbacks as PUT or POST: both exist in the wild.
    callback_method: str = "PUT"


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(config: SandboxConfig) -> web.Application:
    app = web.Application()
    mtn = MtnSandbox(
        settle_seconds=config.settle_seconds,
        slow_seconds=config.slow_seconds,
        callback_method=config.callback_method,
    )
    app[MTN_KEY] = mtn
    app.add_routes([web.get("/_sandbox/health", _health), *mtn.routes()])

    async def _close(_app: web.Application) -> None:
        await mtn.close()

    app.on_cleanup.append(_close)
    return app
