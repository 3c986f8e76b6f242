"""The distribution registers the store under its name, and agl loads it through the kernel's one loader."""

from agl_kernel.plugins import list_plugins, load_component
from agl_store_template import TemplateLightningStore


def test_registered_in_agl_stores() -> None:
    assert load_component("stores", "template") is TemplateLightningStore
    [info] = [i for i in list_plugins("stores") if i.name == "template"]
    assert info.distribution == "agl-store-template"
