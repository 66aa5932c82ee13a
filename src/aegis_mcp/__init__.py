"""aegis-mcp: a supervisor for AI coding agents.

Hot-reload of the agent with its conversation kept, an MCP server injected into the wrapped
agent only, a pool of background agents, and network monitoring.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
