"""What every ``agl`` command that talks to a store server shares: its ``--token`` option (``AGL_STORE_TOKEN`` when
the flag is absent), and the one line that a server's refusal of the token becomes, wherever in the command it
happens (the rollouts and resources commands, ``agl runner``'s loop, ``agl train --store URL``, a plugin's command).

``agl_kernel.cli`` prints that line with exit code 2 (as for a bad flag): the user's next step is to give the
right token, which the line says how to do. Importing this module needs click only.
"""

from __future__ import annotations

import sys
from typing import Any

import click

__all__ = ["TOKEN_ENV", "refused_token", "token_option"]

TOKEN_ENV = "AGL_STORE_TOKEN"

token_option = click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    help=f"The store server's bearer token, when the store is a server's URL (default: ${TOKEN_ENV}).",
)
"""The ``--token`` option of every command that may talk to a store server."""


def _auth_error(exc: BaseException) -> BaseException | None:
    """The client's ``StoreAuthError`` in ``exc``, what it was raised from, or the exceptions it groups."""
    core = sys.modules.get("agl_kernel._client_core")
    if core is None:  # the client was never imported: no server can have refused anything
        return None
    auth_error: type[BaseException] = core.StoreAuthError
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        err = pending.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, auth_error):
            return err
        pending.extend([err.__cause__, err.__context__, *getattr(err, "exceptions", ())])
    return None


def refused_token(exc: BaseException) -> str | None:
    """The one line for a store server's 401/403 in ``exc`` (or in what it was raised from); ``None`` when ``exc``
    is about something else. It says whether a token was sent and refused or none was given, and how to give one."""
    err: Any = _auth_error(exc)
    if err is None:
        return None
    server = f"the store server at {err.url}" if err.url else "the store server"
    status = err.status_code or 401
    if err.token_sent:
        return (
            f"{server} refused the token given (HTTP {status}); give the token the server was started with: "
            f"--token TOKEN or the {TOKEN_ENV} environment variable"
        )
    return (
        f"{server} needs a token and none was given (HTTP {status}); give it with --token TOKEN or the "
        f"{TOKEN_ENV} environment variable"
    )
