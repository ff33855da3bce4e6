"""The configuration: `backworks.yaml` into frozen classes, every error with its key path.

- model.py: the frozen classes (`Config`, `PluginConfig`, ...), defaults on them;
- parse.py: YAML into those classes, every problem listed at once;
- reader.py: YAML loading, `${VAR}` interpolation and the typed `Reader` under it;
- source.py: the file a reload reads again, and what only a restart can change.
"""

from backworks.config.model import (
    AdminConfig,
    CircuitBreakerConfig,
    Config,
    DashboardConfig,
    DiscoveryConfig,
    EndpointConfig,
    LoggingConfig,
    PluginConfig,
    ProcessLimits,
    ServerConfig,
    StaticResponse,
)
from backworks.config.parse import (
    CONFIG_FILE,
    default_config,
    find_config,
    load_config,
    parse_config,
)
from backworks.config.source import ConfigSource, with_listen_address

__all__ = [
    "CONFIG_FILE",
    "AdminConfig",
    "CircuitBreakerConfig",
    "Config",
    "ConfigSource",
    "DashboardConfig",
    "DiscoveryConfig",
    "EndpointConfig",
    "LoggingConfig",
    "PluginConfig",
    "ProcessLimits",
    "ServerConfig",
    "StaticResponse",
    "default_config",
    "find_config",
    "load_config",
    "parse_config",
    "with_listen_address",
]
