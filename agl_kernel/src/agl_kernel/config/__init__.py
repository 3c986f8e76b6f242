"""Configuration: every component's options as an attrs class, structured with cattrs from a TOML run file, the
environment and ``--set`` overrides, with one-line errors that name the full path (``algorithm.steps``).

A component declares its options with an ``Options`` attribute::

    @attrs.define(kw_only=True)
    class MyOptions:
        steps: int = attrs.field(default=10, validator=attrs.validators.ge(1))
        \"\"\"Training steps.\"\"\"

    class MyAlgorithm(Algorithm):
        Options = MyOptions
        def __init__(self, *, steps: int = 10) -> None: ...

The kernel builds ``MyOptions`` from the user's configuration and makes the component with
``MyAlgorithm.from_options(options, **objects)`` when it defines that class method, else with
``MyAlgorithm(**fields_of(options), **objects)``. See ``docs/writing-plugins.md``.
"""

from agl_kernel.config._options import (
    OptionInfo,
    build_options,
    describe_options,
    options_class,
    options_fields,
    options_with,
    to_plain,
    type_name,
)
from agl_kernel.config._run import (
    COMPONENT_TABLES,
    ENV_PREFIX,
    Choice,
    RunConfig,
    RunOptions,
    import_spec,
    load_run_config,
    parse_override,
    to_toml,
)

__all__ = [
    "COMPONENT_TABLES",
    "ENV_PREFIX",
    "Choice",
    "OptionInfo",
    "RunConfig",
    "RunOptions",
    "build_options",
    "describe_options",
    "import_spec",
    "load_run_config",
    "options_class",
    "options_fields",
    "options_with",
    "parse_override",
    "to_plain",
    "to_toml",
    "type_name",
]
