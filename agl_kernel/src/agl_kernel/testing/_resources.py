"""Versioned resources: add, update, get by version, latest."""

from __future__ import annotations

import pytest

from agl_kernel.errors import NotFoundError
from agl_kernel.models import LLM, PromptTemplate, ProxyLLM, Resource, ResourcesUpdate
from agl_kernel.store.base import LightningStore
from agl_kernel.testing._base import SuiteBase


def prompt(text: str) -> dict[str, Resource]:
    return {"prompt": PromptTemplate(template=text)}


class ResourceTests(SuiteBase):
    async def test_no_resources_initially(self, store: LightningStore) -> None:
        assert await store.get_latest_resources() is None
        page = await store.query_resources()
        assert page.items == [] and page.total == 0

    async def test_add_resources(self, store: LightningStore) -> None:
        resources: dict[str, Resource] = {
            "prompt": PromptTemplate(template="Hello {name}", engine="f-string"),
            "llm": LLM(endpoint="http://localhost:8000/v1", model="m", sampling_parameters={"temperature": 0.7}),
            "proxy": ProxyLLM(endpoint="http://proxy/v1", model="p", api_key="k"),
        }
        added = await store.add_resources(resources)
        assert isinstance(added, ResourcesUpdate)
        assert added.resources_id and added.version == 1
        assert added.resources == resources
        assert added.create_time <= added.update_time
        fetched = await store.get_resources(added.resources_id)
        assert fetched == added
        # Types (tagged union) survive the store.
        assert type(fetched.resources["proxy"]) is ProxyLLM
        assert type(fetched.resources["llm"]) is LLM
        assert type(fetched.resources["prompt"]) is PromptTemplate
        assert await store.get_latest_resources() == added
        other = await store.add_resources(prompt("x"))
        assert other.resources_id != added.resources_id and other.version == 1
        assert (await store.get_latest_resources()) == other

    async def test_update_resources_versions(self, store: LightningStore) -> None:
        v1 = await store.update_resources("main", prompt("one"))
        assert v1.resources_id == "main" and v1.version == 1
        v2 = await store.update_resources("main", prompt("two"))
        assert v2.resources_id == "main" and v2.version == 2
        assert (await store.get_resources("main")) == v2
        assert (await store.get_resources("main", 2)) == v2
        assert (await store.get_resources("main", None)) == v2
        old = await store.get_resources("main", 1)
        assert old == v1 and old.resources == prompt("one")
        assert v2.create_time <= v2.update_time
        with pytest.raises(NotFoundError):
            await store.get_resources("main", 3)
        with pytest.raises(NotFoundError, match="res-missing"):
            await store.get_resources("res-missing")
        with pytest.raises(NotFoundError, match="res-missing"):
            await store.get_resources("res-missing", 1)

    async def test_latest_follows_last_write(self, store: LightningStore) -> None:
        a1 = await store.update_resources("a", prompt("a1"))
        b1 = await store.update_resources("b", prompt("b1"))
        assert await store.get_latest_resources() == b1
        a2 = await store.update_resources("a", prompt("a2"))
        assert await store.get_latest_resources() == a2
        added = await store.add_resources(prompt("c"))
        assert await store.get_latest_resources() == added
        # An update of an existing id after an add makes that id (newest version) the latest again.
        b2 = await store.update_resources("b", prompt("b2"))
        assert await store.get_latest_resources() == b2
        assert a1.version == 1 and b2.version == 2

    async def test_update_resources_on_added_id(self, store: LightningStore) -> None:
        added = await store.add_resources(prompt("v1"))
        v2 = await store.update_resources(added.resources_id, prompt("v2"))
        assert v2.version == 2 and v2.resources_id == added.resources_id
        assert (await store.get_resources(added.resources_id, 1)).resources == prompt("v1")

    async def test_query_resources(self, store: LightningStore) -> None:
        writes = [
            await store.update_resources("x", prompt("x1")),
            await store.update_resources("y", prompt("y1")),
            await store.update_resources("x", prompt("x2")),
            await store.update_resources("x", prompt("x3")),
        ]
        everything = await store.query_resources()
        assert [(r.resources_id, r.version) for r in everything.items] == [(r.resources_id, r.version) for r in writes]
        assert everything.total == 4
        only_x = await store.query_resources(resources_id="x")
        assert [r.version for r in only_x.items] == [1, 2, 3] and only_x.total == 3
        page = await store.query_resources(resources_id="x", limit=1, offset=1)
        assert [r.version for r in page.items] == [2] and page.total == 3
        by_version = await store.query_resources(sort_by="version", sort_order="desc", limit=2)
        assert [r.version for r in by_version.items] == [3, 2] and by_version.total == 4

    async def test_resources_snapshots_do_not_change(self, store: LightningStore) -> None:
        v1 = await store.update_resources("s", prompt("one"))
        await store.update_resources("s", prompt("two"))
        assert v1.version == 1 and v1.resources == prompt("one")
