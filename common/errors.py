"""Error types that every part of Hookpost raises and the CLI turns into one plain line."""


class HookpostError(Exception):
    """Base class of every error Hookpost raises on purpose."""


class ConfigError(HookpostError, ValueError):
    """A setting is missing or malformed (raised at start-up, before any work is taken)."""


class NotFoundError(HookpostError):
    """A webhook or event id does not exist in the store."""


class InvalidInputError(HookpostError, ValueError):
    """Operator or producer input that cannot be accepted (bad URL, unknown status, bad change event)."""


class PublishError(HookpostError):
    """The broker did not confirm a message (nack, unroutable, or connection lost before the confirm)."""


class BrokerUnavailableError(HookpostError):
    """No configured RabbitMQ address accepted a connection."""


class BrokerBlockedError(PublishError):
    """The broker is blocking publishes (a resource alarm: memory or disk) and did not confirm in time."""


class StoreRefusedError(HookpostError):
    """The store refuses a write for good (a document over its size limit): trying again cannot make it succeed."""
