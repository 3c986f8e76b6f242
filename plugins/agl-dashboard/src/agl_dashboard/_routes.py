"""The dashboard's HTTP routes: its page and scripts at ``/`` (served without the token: they hold no data) and
its read-only JSON under ``/api/dashboard`` (behind the server's token like every other data route)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from litestar import Response, Router, get
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, FromQuery, Parameter
from litestar.static_files import create_static_files_router

from agl_dashboard import _data
from agl_kernel.models import RolloutMode, RolloutStatus
from agl_kernel.server import PUBLIC
from agl_kernel.store.base import SORT_FIELDS, LightningStore

__all__ = ["API_PREFIX", "STATIC_DIR", "assets_built", "dashboard_routes"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""Where ``npm run build`` (in ``plugins/agl-dashboard/frontend``) puts the page; the wheel ships it."""
API_PREFIX = "/api/dashboard"

_NOT_BUILT = """<!doctype html><html><head><meta charset="utf-8"><title>agl dashboard: not built</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>The agl dashboard is not built</h1>
<p>This installation of <code>agl-dashboard</code> has no page to serve: its frontend was never built. In a
checkout of the agl repository, build it with</p>
<pre>cd plugins/agl-dashboard/frontend &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>(or install a wheel of <code>agl-dashboard</code>, which ships the built page). The store's REST API at
<code>/api/v1</code> works either way.</p></body></html>"""


def assets_built() -> bool:
    """Whether the frontend has been built into the package (``static/index.html`` exists)."""
    return (STATIC_DIR / "index.html").is_file()


@get("/", opt={PUBLIC: True}, include_in_schema=False, media_type="text/html")
async def index() -> Response[bytes]:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return Response(_NOT_BUILT.encode(), status_code=503, media_type="text/html")
    return Response(page.read_bytes(), media_type="text/html", headers={"cache-control": "no-cache"})


def _comma_list(choices: type[Any], what: str) -> Any:
    """Documents a query parameter given as ``?name=a&name=b`` or ``?name=a,b`` (each item checked by the handler,
    which says what it accepts): an array of strings, each a comma-separated list of ``choices``."""
    word = "|".join(sorted(member.value for member in choices))
    return Parameter(
        description=f"Only {what} with one of these values (repeat the parameter, or separate values by commas)",
        schema_extra={
            "one_of": None,
            "type": OpenAPIType.ARRAY,
            "items": Schema(type=OpenAPIType.STRING, pattern=f"^({word})?(,({word})?)*$"),
        },
    )


# The handler checks these itself (its messages say what is allowed); the document says the same from the same
# definitions (the store contract's sort fields, the page size, the enums).
_Statuses = Annotated[list[str] | None, _comma_list(RolloutStatus, "rollouts in a status")]
_Modes = Annotated[list[str] | None, _comma_list(RolloutMode, "rollouts of a mode")]
_SortBy = Annotated[str, Parameter(schema_extra={"enum": sorted(SORT_FIELDS["rollouts"])})]
_SortOrder = Annotated[str, Parameter(schema_extra={"enum": ["asc", "desc"]})]
_Limit = Annotated[int, Parameter(schema_extra={"minimum": 1, "maximum": _data.MAX_PAGE})]
_Offset = Annotated[int, Parameter(schema_extra={"minimum": 0, "maximum": _data.MAX_OFFSET})]


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [item for raw in values for item in str(raw).split(",") if item]


@get("/rollouts", summary="A page of rollouts with reward and latest attempt (dashboard)")
async def rollouts(
    store: NamedDependency[LightningStore],
    status: _Statuses = None,
    mode: _Modes = None,
    q: FromQuery[str] = "",
    sort_by: _SortBy = "start_time",
    sort_order: _SortOrder = "desc",
    limit: _Limit = 50,
    offset: _Offset = 0,
) -> dict[str, Any]:
    if sort_order not in ("asc", "desc"):
        from agl_kernel.errors import InvalidQueryError

        raise InvalidQueryError(f"sort_order must be 'asc' or 'desc', not {sort_order!r}")
    return await _data.rollouts_page(
        store,
        statuses=_data.parse_statuses(_list(status)),
        modes=_data.parse_modes(_list(mode)),
        search=q,
        sort_by=sort_by,
        sort_order=sort_order,
        limit=limit,
        offset=offset,
    )


@get("/rollouts/{rollout_id:str}", summary="A rollout, its attempts and one attempt's trace (dashboard)")
async def rollout(
    store: NamedDependency[LightningStore], rollout_id: FromPath[str], attempt: FromQuery[str] = "latest"
) -> Any:
    return await _data.rollout_detail(store, rollout_id, attempt)


@get("/resources", summary="Every version of every resources set (dashboard)")
async def resources(store: NamedDependency[LightningStore]) -> dict[str, Any]:
    versions = (await store.query_resources()).items
    latest = await store.get_latest_resources()
    return {"versions": versions, "latest": None if latest is None else [latest.resources_id, latest.version]}


@get("/workers", summary="Workers with their heartbeat stats (dashboard)")
async def workers(store: NamedDependency[LightningStore]) -> dict[str, Any]:
    import time

    return {"workers": (await store.query_workers()).items, "now": time.time()}


@get("/training", summary="Training runs: metrics per step and validation, APO candidates (dashboard)")
async def training(store: NamedDependency[LightningStore]) -> dict[str, Any]:
    return await _data.training_runs(store)


def dashboard_routes() -> list[Any]:
    """The route handlers to add to a store server (``create_app(store, route_handlers=dashboard_routes())``);
    the ``agl_register_routes`` hook adds them to every server when the plugin is installed."""
    api = Router(path=API_PREFIX, route_handlers=[rollouts, rollout, resources, workers, training], tags=["dashboard"])
    assets = create_static_files_router(
        path="/assets",
        directories=[STATIC_DIR / "assets"],
        opt={PUBLIC: True},
        include_in_schema=False,
        name="dashboard-assets",
    )
    return [index, api, assets]
