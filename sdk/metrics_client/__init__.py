"""Client for the llmcost API: record what every LLM call costs without slowing the call down.

    from metrics_client import SyncMetricsClient

    client = SyncMetricsClient(base_url="http://localhost:8000")   # token from LLMCOST_API_KEY
    client.track_request(model="gpt-4o", prompt_tokens=100, output_tokens=20, team_alias="chatbot")
"""

from ._version import __version__
from .aio import AsyncMetricsClient
from .client import SyncMetricsClient
from .errors import MetricsClientError, MetricsValidationError
from .stats import ClientStats

__all__ = [
    "AsyncMetricsClient",
    "ClientStats",
    "MetricsClientError",
    "MetricsValidationError",
    "SyncMetricsClient",
    "__version__",
]
