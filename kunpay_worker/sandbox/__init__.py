"""A local simulator of the providers' APIs (``kunpay-worker sandbox``), strict like them."""

from kunpay_worker.sandbox.app import build_app
from kunpay_worker.sandbox.common import SandboxConfig

__all__ = ["SandboxConfig", "build_app"]
