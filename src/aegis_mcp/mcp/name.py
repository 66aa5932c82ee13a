"""The name under which aegis-mcp's MCP server is given to every agent. The agents show its
tools as `mcp__aegis-mcp__<tool>`, which is what their allow-lists name (profiles.argv), and
the injection skips a server of this name in the user's own config (mcp.codex)."""

SERVER_NAME = "aegis-mcp"
