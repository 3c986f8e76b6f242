"""Exceptions raised by agl. Every message says what was wrong and what to do next."""

from __future__ import annotations

__all__ = [
    "AglError",
    "ConfigError",
    "InvalidQueryError",
    "InvalidStatusTransitionError",
    "LLMUnreachableError",
    "MissingDependencyError",
    "NotFoundError",
    "PluginError",
    "PluginNotFoundError",
    "StoreClosedError",
    "StoreDamagedError",
]


class AglError(Exception):
    """Base of every error agl raises on purpose."""


class NotFoundError(AglError, LookupError):
    """An id (rollout, attempt, resources, worker) names nothing in the store."""


class InvalidQueryError(AglError, ValueError):
    """A query asked for something the store cannot do: an unknown sort field, a negative limit, ..."""


class InvalidStatusTransitionError(AglError, ValueError):
    """A status change the store's state machine does not allow."""


class StoreClosedError(AglError, RuntimeError):
    """The store was used after ``close()``."""


class ConfigError(AglError, ValueError):
    """A configuration value (run file, environment variable, ``--set``, a component's options) is wrong: the
    message names its full path (``algorithm.steps``), what was expected and the valid keys or choices."""


class PluginError(AglError):
    """A plugin could not be found or loaded."""


class PluginNotFoundError(PluginError, LookupError):
    """No plugin of the asked kind has the asked name."""


class MissingDependencyError(PluginError, ImportError):
    """A plugin or feature needs an optional package that is not installed; the message names what to install."""


class StoreDamagedError(AglError, RuntimeError):
    """The store's data cannot be used: its file is damaged, or can no longer be written. The message names it and
    what to do (restore a backup, fix permissions); retrying does not help until someone does."""


class LLMUnreachableError(AglError, ConnectionError):
    """An agent's LLM call could not reach the endpoint of an LLM resource: the message names the resource, the
    resources id and version, the run, and the endpoint (a run given a stale or wrong endpoint)."""
