"""Typed application keys: every shared resource of the aiohttp app, in one module."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from voice_gateway.agents.base import Agent
from voice_gateway.archive.db import Archive
from voice_gateway.metrics import Metrics
from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.models import Session
from voice_gateway.sessions.store import SessionStore
from voice_gateway.settings import Settings
from voice_gateway.telephony.bridge import CallBridge
from voice_gateway.telephony.calls import CallRegistry
from voice_gateway.telephony.rest import TwilioRestClient

#: Makes the bridge (turns + agent) for a call's session.
BridgeFactory = Callable[[web.Application, Session], CallBridge]

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", SessionStore)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
ARCHIVE = web.AppKey("archive", Archive)
METRICS = web.AppKey("metrics", Metrics)
#: None when no Twilio credentials are configured (hang-up and transfer then fail loudly).
TWILIO: web.AppKey[TwilioRestClient | None] = web.AppKey("twilio")
CALLS = web.AppKey("calls", CallRegistry)
BRIDGE_FACTORY: web.AppKey[BridgeFactory] = web.AppKey("bridge_factory")
#: The agent catalogue, built once at startup: agent id -> Agent.
AGENTS: web.AppKey[dict[str, Agent]] = web.AppKey("agents")
#: Set when the instance drains (SIGTERM): readiness goes false, new calls are refused.
DRAINING = web.AppKey("draining", asyncio.Event)
#: Set on shutdown: background loops stop.
STOPPING = web.AppKey("stopping", asyncio.Event)
