"""The OpenAPI document the server publishes (``/schema/openapi.json``), made from the definitions it validates with.

Litestar lays out the paths, parameters and status codes from the route handlers. The schemas of request and
response bodies are then replaced by msgspec's own JSON Schema of the types the handlers decode and encode
(:func:`msgspec.json.schema_components`): the decoder is msgspec, so its schema says exactly what it accepts, which
litestar's rendering of the same structs does not (it drops constraints inside optional fields, such as the
``exclusiveMinimum`` of a timeout, and never writes ``additionalProperties: false`` for a struct that refuses unknown
fields). On top of that, what the server adds to every route:

- every error answer is declared with its body, the server's :class:`~agl_kernel.server._wire.ErrorBody` (400 when
  an operation takes input, 404 when its path names something, 413 with a body, 401 with a token, 500 and 503), in
  place of litestar's own 400 shape, which the server never sends;
- in request bodies, the numbers the stores keep, which the structs do not say: an integer in any JSON value
  (inputs, metadata, attributes) or in an integer field lies in -2**63 .. 2**64-1 (msgpack's range: the stores
  serialise with it and refuse what it cannot hold), a span's sequence id is at most 2**63-1 (an SQLite column). A
  struct that reads differently with these limits is published twice: ``Span`` (as answers carry it) and
  ``SpanInput`` (as a request may). The calls of a batch answer a refusal in their result, not with a 400, so the
  batch's body is documented without them;
- with a token, the bearer scheme and, per operation, that it needs it;
- what a handler that reads the raw request declares itself, as ``opt={OPENAPI: {...}}`` (OTLP's bodies).

The document is built on first use and kept (``app.state``), so that starting a server costs nothing for it. It
is served as JSON (``/schema/openapi.json``), YAML (``/schema/openapi.yaml``) and, at ``/schema``, as a plain HTML
page that the server writes from it (:class:`_PlainPage`): every operation with its summary, parameters and the
schemas of its bodies, and every schema. The page loads nothing from anywhere (no script, no stylesheet, no font):
litestar's Redoc and Swagger pages fetch their code from a CDN, so they are blank on a machine without internet.
"""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Iterator
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.routes import HTTPRoute

from agl_kernel.server._wire import INT64_MAX, INT64_MIN, ErrorBody

__all__ = ["CALLS_ANSWER_FOR_THEMSELVES", "OPENAPI", "openapi_document", "render_page", "render_plugins"]

OPENAPI = "agl_openapi"
"""The key of a route handler's ``opt`` whose mapping is merged into its operation (``requestBody``,
``responses``, ...): for handlers that read the raw request, so that litestar cannot see their bodies."""
CALLS_ANSWER_FOR_THEMSELVES = "agl_calls_answer_for_themselves"
"""``opt={CALLS_ANSWER_FOR_THEMSELVES: True}``: the handler runs several calls and answers each one's refusal in its
result (the batch route), so its body is documented as decoded, without the stores' limits (which would be a 400)."""

UINT64_MAX = 2**64 - 1
_REF = "#/components/schemas/"
JSON_VALUE = "JsonValue"
_JSON_VALUE_REF = {"$ref": _REF + JSON_VALUE}
_JSON_VALUE_SCHEMA: dict[str, Any] = {
    # No "type", and no anyOf with a branch per type: keywords that each apply to one JSON type, so that any value
    # is valid and only integers, arrays and objects are constrained.
    "title": JSON_VALUE,
    "description": (
        "Any JSON value. Its integers must lie in -2**63 .. 2**64-1: the stores serialise values with msgpack and "
        "refuse (400) an integer they could not keep; send larger ones as strings. (A number written with a "
        "fraction or an exponent is a float to the server and kept whatever its size; JSON Schema cannot tell "
        "1e300 from the integer 10**300, so this schema refuses both.)"
    ),
    "if": {"type": "integer"},
    "then": {"minimum": INT64_MIN, "maximum": UINT64_MAX},
    "items": _JSON_VALUE_REF,
    "additionalProperties": _JSON_VALUE_REF,
}
_FIELD_BOUNDS: dict[tuple[str, str], dict[str, Any]] = {
    # A column of its own in a durable store: a signed 64-bit integer; 0 or below asks the store for the next one.
    ("Span", "sequence_id"): {"maximum": INT64_MAX},
}
"""Integer fields of kernel structs that the stores keep in another range than msgpack's (the structs do not say
so themselves): the schema of the field, as the stores limit it."""

_ERROR_DESCRIPTIONS = {
    400: "Malformed or invalid request (the message names the field)",
    401: "The server has a token and the request lacks the right one",
    404: "An id names nothing in the store (the message names it)",
    413: "The request body is larger than the server accepts",
    500: "Unexpected server error; error_id finds it in the server log",
    503: "The server is shutting down or its store is closed",
}
_SCHEMA_KEYWORDS = ("type", "$ref", "anyOf", "oneOf", "allOf", "enum", "const", "not", "properties", "items")


def _component_name(name: str) -> str:
    """msgspec names generic structs ``PaginatedResult[Rollout]``; OpenAPI allows ``[A-Za-z0-9._-]`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _is_any(schema: dict[str, Any]) -> bool:
    return not any(key in schema for key in _SCHEMA_KEYWORDS)


def _bound_integer(schema: dict[str, Any], low: int, high: int) -> None:
    if "minimum" not in schema and "exclusiveMinimum" not in schema:
        schema["minimum"] = low
    if "maximum" not in schema and "exclusiveMaximum" not in schema:
        schema["maximum"] = high


def _fit_to_stores(schema: Any) -> Any:
    """``schema`` (msgspec's) with "any JSON" narrowed to what the stores keep, and integers bounded."""
    if isinstance(schema, list):
        return [_fit_to_stores(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if _is_any(schema):
        return {**schema, **_JSON_VALUE_REF}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "patternProperties"):
            out[key] = {name: _fit_to_stores(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") or key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            out[key] = _fit_to_stores(value) if value is not False else False
        else:
            out[key] = value
    kind = out.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "object" in kinds and "properties" not in out and "additionalProperties" not in out:
        out["additionalProperties"] = _JSON_VALUE_REF
    if "array" in kinds and "items" not in out and "prefixItems" not in out:
        out["items"] = _JSON_VALUE_REF
    if "integer" in kinds:
        _bound_integer(out, INT64_MIN, UINT64_MAX)
    return out


def _handler_operations(app: Litestar, paths: dict[str, Any]) -> Iterator[tuple[Any, dict[str, Any], str]]:
    """(route handler, its operation in ``paths``, the path) for every documented operation."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path_format not in paths:
            continue
        item = paths[route.path_format]
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = item.get(method.lower())
                if isinstance(operation, dict):
                    yield handler, operation, route.path_format


def _schema_type(annotation: Any) -> Any:
    """The annotation if msgspec can describe it (not a litestar ``Response`` or raw bytes), else ``None``."""
    if annotation is None or annotation is bytes:
        return None
    try:
        msgspec.json.schema(annotation)
    except (TypeError, ValueError):
        return None
    return annotation


def _error_response(status: int, description: str | None = None) -> dict[str, Any]:
    return {
        "description": description or _ERROR_DESCRIPTIONS.get(status, "Refused"),
        "content": {"application/json": {"schema": {"$ref": _REF + "ErrorBody"}}},
    }


def _merge(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _refs(node: Any) -> set[str]:
    return {
        ref[len(_REF) :]
        for schema in _walk(node)
        if isinstance(ref := schema.get("$ref"), str) and ref.startswith(_REF)
    }


def _reach(roots: set[str], components: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen or name not in components:
            continue
        seen.add(name)
        pending.extend(_refs(components[name]))
    return seen


def _rename_refs(node: Any, rename: Any) -> Any:
    for schema in _walk(node):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            schema["$ref"] = _REF + rename(ref[len(_REF) :])
    return node


def _body_schemas(slots: list[tuple[dict[str, Any], Any, bool]]) -> dict[str, Any]:
    """Put msgspec's schema of each slot's type in it; the components they use.

    A slot is (where the schema goes, the type, whether the stores' limits apply). Requests get the limits
    (:func:`_fit_to_stores`); answers, and the calls of a batch (whose refusals are answers too), get the schema as
    msgspec encodes and decodes it. A struct that reads differently under the limits is published twice, as is
    and as ``<Name>Input``.
    """
    refs, components = msgspec.json.schema_components(
        [kind for _, kind, _ in slots] + [ErrorBody], ref_template=_REF + "{name}"
    )
    plain_roots = {"ErrorBody"}.union(*(_refs(ref) for (_, _, strict), ref in zip(slots, refs) if not strict))
    strict_roots: set[str] = set().union(*(_refs(ref) for (_, _, strict), ref in zip(slots, refs) if strict))
    plain, limited = _reach(plain_roots, components), _reach(strict_roots, components)
    fitted = {name: _fit_to_stores(components[name]) for name in limited}
    for name, schema in fitted.items():
        for (struct, field), bounded in _FIELD_BOUNDS.items():
            if name == struct and field in schema.get("properties", {}):
                schema["properties"][field] = {**components[name]["properties"][field], **bounded}
    differs = {name for name in limited if fitted[name] != components[name]}
    grown = True
    while grown:  # a struct that refers to one that differs differs too (it refers to the other one)
        more = {name for name in limited - differs if _refs(components[name]) & differs}
        differs |= more
        grown = bool(more)

    def plain_name(name: str) -> str:
        return _component_name(name)

    def strict_name(name: str) -> str:
        return _component_name(f"{name}Input" if name in differs and name in plain else name)

    schemas: dict[str, Any] = {}
    for name in plain:
        schemas[plain_name(name)] = _rename_refs(copy.deepcopy(components[name]), plain_name)
    for name in limited:
        schema = fitted[name] if name in differs else components[name]
        schemas[strict_name(name)] = _rename_refs(copy.deepcopy(schema), strict_name)
    for (media, _, strict), ref in zip(slots, refs):
        media["schema"] = _rename_refs(_fit_to_stores(ref), strict_name) if strict else _rename_refs(ref, plain_name)
    if any(JSON_VALUE in _refs(schema) for schema in schemas.values()) or any(
        JSON_VALUE in _refs(media) for media, _, _ in slots
    ):
        schemas[JSON_VALUE] = copy.deepcopy(_JSON_VALUE_SCHEMA)
    return schemas


def build_document(app: Litestar, base: dict[str, Any], *, token: bool = False) -> dict[str, Any]:
    """The document for ``app``, from litestar's (``base``, as ``OpenAPI.to_schema()`` gives it)."""
    from agl_kernel.server._auth import OPEN_PATHS, PUBLIC

    doc = copy.deepcopy(base)
    paths: dict[str, Any] = doc.get("paths", {})
    slots: list[tuple[dict[str, Any], Any, bool]] = []
    operations: list[tuple[Any, dict[str, Any], str]] = list(_handler_operations(app, paths))
    for handler, operation, _ in operations:
        data = handler.parsed_fn_signature.parameters.get("data")
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if data is not None and body is not None and (kind := _schema_type(data.annotation)) is not None:
            slots.append((body, kind, handler.opt.get(CALLS_ANSWER_FOR_THEMSELVES) is not True))
        success = operation.get("responses", {}).get(str(handler.status_code), {})
        media = success.get("content", {}).get(getattr(handler.media_type, "value", handler.media_type))
        returned = _schema_type(handler.parsed_fn_signature.return_type.annotation)
        if media is not None and returned is not None:
            slots.append((media, returned, False))
    schemas = _body_schemas(slots)

    for handler, operation, path in operations:
        if extra := handler.opt.get(OPENAPI):
            _merge(operation, extra)
        responses = operation.setdefault("responses", {})
        wanted = {500, 503}
        if operation.get("parameters") or "requestBody" in operation:
            wanted.add(400)
        if "requestBody" in operation:
            wanted.add(413)
        if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
            wanted.add(404)
        needs_token = token and path not in OPEN_PATHS and handler.opt.get(PUBLIC) is not True
        if needs_token:
            wanted.add(401)
            operation["security"] = [{"bearer": []}]
        for status in sorted(wanted):
            responses.setdefault(str(status), _error_response(status))
        for status, response in responses.items():
            # Litestar's own 400 (its ValidationException's shape) is never sent: the server's handler answers.
            content = response.get("content", {}).get("application/json")
            litestars = content is not None and "detail" in content.get("schema", {}).get("properties", {})
            if status.startswith(("4", "5")) and litestars:
                content["schema"] = {"$ref": _REF + "ErrorBody"}
    # Keep litestar's components only where the document still uses them (parameters, hand-written parts).
    litestar_schemas = doc.get("components", {}).get("schemas", {})
    for name in _reach((_refs(paths) | _refs(schemas)) - set(schemas), litestar_schemas):
        schemas[name] = litestar_schemas[name]
    components_section = doc.setdefault("components", {})
    components_section["schemas"] = dict(sorted(schemas.items()))
    if token:
        components_section["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The document ``app`` serves (built on first use, then kept)."""
    document = app.state.get("agl_openapi_document")
    if document is None:
        ctx = app.state.get("agl")
        token = bool(getattr(ctx, "token_required", False))
        document = build_document(app, app.openapi_schema.to_schema(), token=token)
        app.state["agl_openapi_document"] = document
    return document


class _Rendered(OpenAPIRenderPlugin):
    """Litestar's render plugin ``inner``, rendering this server's document instead of litestar's own."""

    def __init__(self, inner: OpenAPIRenderPlugin) -> None:
        super().__init__(path=inner.paths, media_type=inner.media_type)
        self.inner = inner

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return self.inner.render(request, openapi_document(request.app))

    def receive_router(self, router: Any) -> None:
        self.inner.receive_router(router)


_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
_PAGE_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222 }
h1 { margin-bottom: .2em } h2 { margin-top: 2em; border-bottom: 1px solid #ccc }
table { border-collapse: collapse; width: 100% } td, th { border: 1px solid #ddd; padding: .3em .5em;
vertical-align: top; text-align: left } th { background: #f4f4f4 }
code, pre { font-family: ui-monospace, monospace; font-size: 13px } pre { background: #f7f7f7; padding: .6em;
overflow-x: auto } .method { font-weight: bold; text-transform: uppercase } .lock { color: #a40 }
"""


def _schema_label(schema: Any) -> str:
    """A schema as HTML for a table cell: the names of the components it uses (linked), or its type."""
    if not isinstance(schema, dict):
        return ""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        name = html.escape(ref[len(_REF) :])
        return f'<a href="#schema-{name}">{name}</a>'
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return " | ".join(_schema_label(item) for item in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_schema_label(schema.get('items')) or 'any'}"
    if isinstance(kind, list):
        return " | ".join(html.escape(str(k)) for k in kind)
    if isinstance(kind, str):
        return html.escape(kind + (f" ({schema['format']})" if "format" in schema else ""))
    return "any"


def _bodies(section: Any) -> str:
    """The media types of a request body or answer, each with its schema."""
    content = section.get("content", {}) if isinstance(section, dict) else {}
    return "<br>".join(
        f"{_schema_label(media.get('schema'))} <small>({html.escape(kind)})</small>"
        for kind, media in content.items()
        if isinstance(media, dict)
    )


def render_page(document: dict[str, Any], json_url: str) -> str:
    """The OpenAPI ``document`` as one self-contained HTML page (no script, no external link but ``json_url``)."""
    info = document.get("info", {})
    title = html.escape(str(info.get("title", "API")))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_PAGE_STYLE}</style></head><body>",
        f"<h1>{title} <small>{html.escape(str(info.get('version', '')))}</small></h1>",
        f"<p>{html.escape(str(info.get('description', '')))}</p>",
        (
            f'<p>The OpenAPI document: <a href="{html.escape(json_url)}">{html.escape(json_url)}</a> (JSON, for '
            f"code generators and API clients); YAML at <code>{html.escape(json_url[: -len('json')] + 'yaml')}"
            "</code>. Operations marked <span class=lock>token</span> need the header <code>Authorization: "
            "Bearer TOKEN</code>.</p>"
        ),
        (
            "<h2>Operations</h2><table><tr><th>method</th><th>path</th><th>summary</th><th>parameters</th>"
            "<th>request body</th><th>answers</th></tr>"
        ),
    ]
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method) if isinstance(item, dict) else None
            if not isinstance(operation, dict):
                continue
            lock = " <span class=lock>token</span>" if operation.get("security") else ""
            parameters = ", ".join(
                f"<code>{html.escape(str(p.get('name')))}</code> ({html.escape(str(p.get('in')))}"
                f"{', required' if p.get('required') else ''})"
                for p in operation.get("parameters", [])
                if isinstance(p, dict)
            )
            answers = "<br>".join(
                f"<b>{html.escape(status)}</b> {_bodies(answer) or html.escape(str(answer.get('description', '')))}"
                for status, answer in sorted(operation.get("responses", {}).items())
                if isinstance(answer, dict)
            )
            out.append(
                f"<tr><td class=method>{method}</td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(str(operation.get('summary', '')))}{lock}</td><td>{parameters}</td>"
                f"<td>{_bodies(operation.get('requestBody'))}</td><td>{answers}</td></tr>"
            )
    out.append("</table><h2>Schemas</h2>")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        anchor = html.escape(name)
        text = html.escape(json.dumps(schema, indent=2, sort_keys=True))
        out.append(f'<h3 id="schema-{anchor}">{anchor}</h3><pre>{text}</pre>')
    out.append("</body></html>")
    return "\n".join(out)


class _PlainPage(OpenAPIRenderPlugin):
    """``/schema``: the document as a plain HTML page the server writes (see :func:`render_page`)."""

    def __init__(self) -> None:
        super().__init__(path=["/", "/redoc", "/swagger"], favicon="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return render_page(openapi_document(request.app), self.get_openapi_json_route(request)).encode("utf-8")


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """The document as an HTML page that needs no internet (``/schema``; ``/schema/redoc`` and
    ``/schema/swagger``, where litestar's CDN pages were, serve it too), JSON (``/schema/openapi.json``) and YAML."""
    return [_PlainPage(), _Rendered(JsonRenderPlugin()), _Rendered(YamlRenderPlugin())]
