"""The distribution registers each skeleton under its name, and agl loads them through the kernel's one loader."""

import pytest

from agl_kernel.plugins import list_plugins, load_component
from agl_store_template import TemplateAlgorithm, TemplateLightningStore, TemplateRunner, TemplateTracer


@pytest.mark.parametrize(
    ("kind", "component"),
    [
        ("stores", TemplateLightningStore),
        ("runners", TemplateRunner),
        ("tracers", TemplateTracer),
        ("algorithms", TemplateAlgorithm),
    ],
)
def test_registered_under_template(kind: str, component: type) -> None:
    assert load_component(kind, "template") is component
    [info] = [i for i in list_plugins(kind, check=True) if i.name == "template"]
    assert info.distribution == "agl-store-template" and info.error is None
    assert info.requires_kernel is not None  # it declares the agl-kernel versions it works with
