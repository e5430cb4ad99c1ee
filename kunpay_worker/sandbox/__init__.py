"""A local simulator of the providers' APIs (``kunpay-worker sandbox``), strict like them."""

from kunpay_worker.sandbox.app import SandboxConfig, build_app

__all__ = ["SandboxConfig", "build_app"]
