"""kunpay: mobile money for African apps.

``KunPayClient`` validates payment commands, publishes them to RabbitMQ with publisher confirms,
and lets the app await outcomes or subscribe to lifecycle events.
"""

from kunpay_sdk.client import Accepted, KunPayClient, Subscription
from kunpay_sdk.contracts import (
    AccountHolderInfo,
    BalanceInfo,
    Event,
    EventType,
    Quote,
    Status,
    TransactionSnapshot,
    TransactionType,
)
from kunpay_sdk.errors import (
    BrokerError,
    CommandNacked,
    CommandNotAccepted,
    CommandUnroutable,
    InvalidAmount,
    InvalidCurrency,
    InvalidField,
    InvalidPhoneNumber,
    KunPayError,
    KunPayTimeout,
    OutcomeUnknown,
    RemoteError,
    TopologyMissing,
    TransactionNotFound,
    UnknownProvider,
    UnsupportedOperator,
    ValidationError,
)

__all__ = [
    "Accepted",
    "AccountHolderInfo",
    "BalanceInfo",
    "BrokerError",
    "CommandNacked",
    "CommandNotAccepted",
    "CommandUnroutable",
    "Event",
    "EventType",
    "InvalidAmount",
    "InvalidCurrency",
    "InvalidField",
    "InvalidPhoneNumber",
    "KunPayClient",
    "KunPayError",
    "KunPayTimeout",
    "OutcomeUnknown",
    "Quote",
    "RemoteError",
    "Status",
    "Subscription",
    "TopologyMissing",
    "TransactionNotFound",
    "TransactionSnapshot",
    "TransactionType",
    "UnknownProvider",
    "UnsupportedOperator",
    "ValidationError",
]

__version__ = "0.1.0"
