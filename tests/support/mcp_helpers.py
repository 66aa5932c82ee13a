"""Talking real MCP over stdio to `aegis-mcp --mcp-server` with the official SDK's client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp import Client, StdioServerParameters

from tests.support.host import aegis_bin

T = TypeVar("T")


def server_params(env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(command=aegis_bin(), args=["--mcp-server"], env=env)


def with_client(env: dict[str, str], body: Callable[[Client], Awaitable[T]],
                timeout: float = 60) -> T:
    async def main() -> T:
        async with Client(server_params(env)) as client:
            return await body(client)

    return asyncio.run(asyncio.wait_for(main(), timeout))


def call(env: dict[str, str], tool: str, args: dict[str, Any] | None = None) -> Any:
    async def body(client: Client) -> Any:
        return await client.call_tool(tool, args or {})

    return with_client(env, body)


def text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)
