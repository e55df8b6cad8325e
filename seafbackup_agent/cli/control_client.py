"""The CLI's side of the agent's control socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from seafbackup_agent.errors import ExitCode, SeafBackupError


class AgentNotRunningError(SeafBackupError):
    exit_code = ExitCode.AGENT_NOT_RUNNING


async def call(socket_path: Path, method: str, path: str, body: dict | None = None,
               timeout: float | None = 30) -> tuple[int, Any]:
    if not socket_path.exists():
        raise AgentNotRunningError(
            f"the seafbackup agent is not running (no control socket at {socket_path})",
            hint="start it: systemctl start seafbackup-agent",
        )
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.request(method, f"http://agent{path}", json=body) as response,
        ):
            return response.status, await response.json()
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentNotRunningError(
            f"the seafbackup agent is not running (cannot connect to {socket_path}: {exc})",
            hint="start it: systemctl start seafbackup-agent",
        ) from exc
