"""What ``agl resources list`` and ``agl resources show`` print: the resources ids of a store, and the history of
one named resource across the versions of its id."""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agl_kernel.errors import AglError
from agl_kernel.models import LLM, PromptTemplate, Resource, ResourcesUpdate

__all__ = ["History", "history", "list_table", "print_history", "resource_text"]


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def resource_text(resource: Resource) -> str:
    """A resource as text: a prompt template's template, an LLM's model and endpoint, else its JSON."""
    if isinstance(resource, PromptTemplate):
        return resource.template
    if isinstance(resource, LLM):
        return f"{resource.model} at {resource.endpoint}"
    return msgspec.json.encode(resource).decode()


async def _all_versions(store: Any, resources_id: str | None = None) -> list[ResourcesUpdate]:
    versions: list[ResourcesUpdate] = []
    while True:
        page = await store.query_resources(resources_id=resources_id, limit=500, offset=len(versions))
        versions.extend(page.items)
        if len(page.items) < 500:
            return versions


async def list_table(store: Any) -> Table:
    async with store:
        versions = await _all_versions(store)
        latest = await store.get_latest_resources()
    by_id: dict[str, list[ResourcesUpdate]] = {}
    for update in versions:
        by_id.setdefault(update.resources_id, []).append(update)
    table = Table(title=f"{len(by_id)} resources ids, {len(versions)} versions")
    for column in ("resources id", "versions", "last changed", "holds"):
        table.add_column(column, justify="right" if column == "versions" else "left")
    for resources_id, updates in by_id.items():
        newest = max(updates, key=lambda u: u.version)
        holds = ", ".join(f"{name} ({type(r).__name__})" for name, r in newest.resources.items())
        marker = " [bold green](latest)[/]" if latest is not None and latest.resources_id == resources_id else ""
        table.add_row(escape(resources_id) + marker, str(len(updates)), _when(newest.update_time), escape(holds))
    return table


@dataclass
class History:
    name: str
    resources_id: str
    versions: list[ResourcesUpdate]
    """Every version of the id, oldest first (the resource may be absent from some)."""


async def history(store: Any, name: str, resources_id: str | None) -> History:
    async with store:
        if resources_id is None:
            latest = await store.get_latest_resources()
            if latest is None:
                raise AglError("the store has no resources yet")
            resources_id = latest.resources_id
        versions = sorted(await _all_versions(store, resources_id), key=lambda u: u.version)
    if not versions:
        raise AglError(f"the store has no resources id {resources_id!r}; `agl resources list` shows the ids")
    if not any(name in v.resources for v in versions):
        names = sorted({n for v in versions for n in v.resources})
        raise AglError(
            f"no version of resources {resources_id!r} holds {name!r}; it holds: {', '.join(names) or 'nothing'}"
        )
    return History(name=name, resources_id=resources_id, versions=versions)


def print_history(found: History, console: Console, diff: bool) -> None:
    previous: str | None = None
    changes = 0
    for update in found.versions:
        resource = update.resources.get(found.name)
        text = None if resource is None else resource_text(resource)
        header = f"[bold]{escape(found.resources_id)} v{update.version}[/] · {_when(update.update_time)}"
        if text == previous:
            console.print(f"{header} · {escape(found.name)} unchanged")
            continue
        changes += 1
        console.rule(header, align="left")
        if text is None:
            console.print(f"({escape(found.name)} is not in this version)")
        elif diff and previous is not None:
            lines = difflib.unified_diff(previous.splitlines(), text.splitlines(), "before", "after", lineterm="")
            for line in list(lines)[2:]:
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
                console.print(f"[{style}]{escape(line)}[/]")
        else:
            console.print(escape(text), highlight=False)
        previous = text
    console.print(
        f"{changes} version(s) of {found.name!r} in {len(found.versions)} version(s) of {found.resources_id!r}"
    )
