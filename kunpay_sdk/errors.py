"""Errors raised by the kunpay SDK.

Every error derives from :class:`KunPayError`::

    KunPayError
    ├── ValidationError (also ValueError)     bad input; nothing was published
    │   ├── InvalidAmount
    │   ├── InvalidCurrency
    │   ├── InvalidPhoneNumber
    │   │   └── UnsupportedOperator           valid number, but no backend of that key serves it
    │   ├── UnknownProvider
    │   └── InvalidField                      ids, keys, order/user ids that are empty, too long,
    │                                         or hold NUL or a lone surrogate
    ├── BrokerError                           talking to RabbitMQ went wrong
    │   ├── TopologyMissing                   kunpay's exchanges are not declared (run migrate)
    │   ├── CommandNotAccepted                the broker definitely did not take the command:
    │   │   ├── CommandNacked                   it answered nack; safe to call again
    │   │   └── CommandUnroutable               no queue behind kunpay.commands
    │   └── OutcomeUnknown                    timeout or lost connection while publishing: the
    │                                         command may or may not be queued. Call again with
    │                                         the same idempotency key: never a second transaction.
    ├── KunPayTimeout (also TimeoutError)     get()/wait() got no answer in time
    ├── TransactionNotFound                   no transaction with that id for this app
    └── RemoteError                           the worker answered a request with an error

``OutcomeUnknown`` and ``CommandNotAccepted`` carry ``transaction_id``, ``command_id`` and
``idempotency_key``, so the caller can retry with the same key or look the transaction up.
"""

from __future__ import annotations

from uuid import UUID

__all__ = [
    "BrokerError",
    "CommandNacked",
    "CommandNotAccepted",
    "CommandUnroutable",
    "InvalidAmount",
    "InvalidCurrency",
    "InvalidField",
    "InvalidPhoneNumber",
    "KunPayError",
    "KunPayTimeout",
    "OutcomeUnknown",
    "RemoteError",
    "TopologyMissing",
    "TransactionNotFound",
    "UnknownProvider",
    "UnsupportedOperator",
    "ValidationError",
]


class KunPayError(Exception):
    """Base class of every error the SDK raises."""


class ValidationError(KunPayError, ValueError):
    """The command is invalid; nothing was published."""


class InvalidAmount(ValidationError):
    pass


class InvalidCurrency(ValidationError):
    pass


class InvalidPhoneNumber(ValidationError):
    pass


class UnsupportedOperator(InvalidPhoneNumber):
    pass


class UnknownProvider(ValidationError):
    pass


class InvalidField(ValidationError):
    pass


class BrokerError(KunPayError):
    """Something went wrong between the SDK and RabbitMQ."""


class TopologyMissing(BrokerError):
    """kunpay's exchanges or queues are missing (the worker or `kunpay-worker migrate` declares
    them)."""


class _CommandIds:
    transaction_id: UUID
    command_id: UUID
    idempotency_key: str

    def _set_ids(self, transaction_id: UUID, command_id: UUID, idempotency_key: str) -> None:
        self.transaction_id = transaction_id
        self.command_id = command_id
        self.idempotency_key = idempotency_key


class CommandNotAccepted(BrokerError, _CommandIds):
    """The broker did not take the command. Calling again is safe."""

    def __init__(
        self, message: str, *, transaction_id: UUID, command_id: UUID, idempotency_key: str
    ) -> None:
        super().__init__(message)
        self._set_ids(transaction_id, command_id, idempotency_key)


class CommandNacked(CommandNotAccepted):
    pass


class CommandUnroutable(CommandNotAccepted):
    pass


class OutcomeUnknown(BrokerError, _CommandIds):
    """The command may or may not have been queued.

    Call the operation again with ``idempotency_key=err.idempotency_key``: the worker derives the
    transaction id from the key, so the retry can never create a second transaction.
    """

    def __init__(
        self, message: str, *, transaction_id: UUID, command_id: UUID, idempotency_key: str
    ) -> None:
        super().__init__(message)
        self._set_ids(transaction_id, command_id, idempotency_key)


class KunPayTimeout(KunPayError, TimeoutError):
    """No answer within the timeout."""


class TransactionNotFound(KunPayError, LookupError):
    def __init__(self, transaction_id: UUID) -> None:
        super().__init__(f"no transaction {transaction_id} for this app")
        self.transaction_id = transaction_id


class RemoteError(KunPayError):
    """The worker answered a request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
