"""Signed HTTP for tests of the transport: the shared token, raw requests signed (or not) as a client would."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from yarl import URL

from seafbackup_agent.transport.server import VERIFIER
from seafbackup_agent.transport.signing import derive_key, sign_headers

TOKEN = "5eafbac6" * 5
OTHER_TOKEN = "0bad0bad" * 5
FAST = {"retries": 1, "backoff": 0.01}


async def past_start(app: web.Application) -> None:
    """Until the server accepts requests signed now: none signed in the second it started (signing.py)."""
    await asyncio.sleep(max(0.0, app[VERIFIER].not_before - time.time()))


async def raw_request(base: str, method: str, path: str, *, token: str = TOKEN, body: bytes = b"", sign_path=None,
                      sign_body=None, sign_method=None, now=None, headers=None, signed=True):
    signature = (
        sign_headers(
            derive_key(token), sign_method or method, sign_path or path, body if sign_body is None else sign_body,
            now=now,
        )
        if signed
        else {}
    )
    async with aiohttp.ClientSession() as session, session.request(
        method, URL(base + path, encoded=True), data=body or None, headers={**signature, **(headers or {})}
    ) as response:
        return response.status, await response.read(), response.headers
