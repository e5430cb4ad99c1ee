"""The sandbox web application: every simulated provider on one port."""

from __future__ import annotations

from aiohttp import web

from kunpay_worker.sandbox.common import SandboxConfig, Simulator
from kunpay_worker.sandbox.faults import Faults, faults_middleware
from kunpay_worker.sandbox.flutterwave import FlutterwaveSandbox
from kunpay_worker.sandbox.mtn_momo import MtnSandbox
from kunpay_worker.sandbox.orange_mp import OrangeMpSandbox
from kunpay_worker.sandbox.pawapay import PawapaySandbox

__all__ = [
    "FAULTS_KEY",
    "FLUTTERWAVE_KEY",
    "MTN_KEY",
    "ORANGE_KEY",
    "SIMULATORS_KEY",
    "SandboxConfig",
    "build_app",
]

MTN_KEY = web.AppKey("mtn", MtnSandbox)
ORANGE_KEY = web.AppKey("orange", OrangeMpSandbox)
FLUTTERWAVE_KEY = web.AppKey("flutterwave", FlutterwaveSandbox)
PAWAPAY_KEY = web.AppKey("pawapay", PawapaySandbox)
SIMULATORS_KEY = web.AppKey("simulators", dict[str, Simulator])
FAULTS_KEY = web.AppKey("faults", Faults)


def build_app(config: SandboxConfig, faults: Faults | None = None) -> web.Application:
    """The sandbox; ``faults`` (also settable on POST /_sandbox/faults) adds injected faults,
    and ``config.latency_seconds`` delays every provider answer."""
    faults = faults or Faults()
    if config.latency_seconds:
        faults.latency = config.latency_seconds
    app = web.Application(middlewares=[faults_middleware(faults)])
    app[FAULTS_KEY] = faults
    simulators: dict[str, Simulator] = {}
    mtn = MtnSandbox(config)
    simulators[mtn.name] = mtn
    app[MTN_KEY] = mtn
    orange = OrangeMpSandbox(config)
    simulators[orange.name] = orange
    app[ORANGE_KEY] = orange
    flutterwave = FlutterwaveSandbox(config)
    simulators[flutterwave.name] = flutterwave
    app[FLUTTERWAVE_KEY] = flutterwave
    pawapay = PawapaySandbox(config, api_token=config.pawapay_api_token)
    simulators[pawapay.name] = pawapay
    app[PAWAPAY_KEY] = pawapay
    app[SIMULATORS_KEY] = simulators
    for sim in simulators.values():
        sim.faults = faults

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "providers": sorted(simulators)})

    async def counts(_request: web.Request) -> web.Response:
        return web.json_response({name: sim.counts() for name, sim in simulators.items()})

    async def release(_request: web.Request) -> web.Response:
        held = sum(sim.held for sim in simulators.values())
        for sim in simulators.values():
            sim.release()
        return web.json_response({"released": held})

    async def get_faults(_request: web.Request) -> web.Response:
        return web.json_response(faults.as_dict())

    async def set_faults(request: web.Request) -> web.Response:
        try:
            faults.update(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(faults.as_dict())

    app.add_routes(
        [
            web.get("/_sandbox/health", health),
            web.get("/_sandbox/faults", get_faults),
            web.post("/_sandbox/faults", set_faults),
            web.get("/_sandbox/requests", counts),
            web.post("/_sandbox/release", release),
            *mtn.routes(),
            *orange.routes(),
            *flutterwave.routes(),
            *pawapay.routes(),
        ]
    )

    async def close(_app: web.Application) -> None:
        for sim in simulators.values():
            await sim.close()

    app.on_cleanup.append(close)
    return app
