"""The types of the names `backworks/__init__.py` imports on first use."""

from backworks.abi.values import (
    Request as Request,
)
from backworks.abi.values import (
    Response as Response,
)
from backworks.config import (
    Config as Config,
)
from backworks.config import (
    ConfigSource as ConfigSource,
)
from backworks.config import (
    load_config as load_config,
)
from backworks.config import (
    parse_config as parse_config,
)
from backworks.errors import (
    AbiMismatchError as AbiMismatchError,
)
from backworks.errors import (
    BackworksError as BackworksError,
)
from backworks.errors import (
    CircuitOpenError as CircuitOpenError,
)
from backworks.errors import (
    ConfigError as ConfigError,
)
from backworks.errors import (
    PluginCallError as PluginCallError,
)
from backworks.errors import (
    PluginCrashedError as PluginCrashedError,
)
from backworks.errors import (
    PluginError as PluginError,
)
from backworks.errors import (
    PluginInitError as PluginInitError,
)
from backworks.errors import (
    PluginLoadError as PluginLoadError,
)
from backworks.errors import (
    PluginTimeoutError as PluginTimeoutError,
)
from backworks.errors import (
    StartupError as StartupError,
)
from backworks.server.app import (
    create_app as create_app,
)
from backworks.server.embed import (
    mount as mount,
)
from backworks.testing import (
    Answer as Answer,
)
from backworks.testing import (
    Plugin as Plugin,
)

__all__: list[str]
