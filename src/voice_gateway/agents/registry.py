"""Builds the configured agents: ``echo``, ``websocket`` and ``python`` (``module:Class``)."""

from __future__ import annotations

import importlib

from voice_gateway.agents.base import Agent
from voice_gateway.agents.echo import EchoAgent
from voice_gateway.agents.websocket import WebSocketAgent
from voice_gateway.errors import ConfigError
from voice_gateway.settings import AgentConfig


def load_plugin(spec: str) -> type[Agent]:
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load agent plugin {spec!r}: {exc}", key="plugin") from exc
    if not isinstance(cls, type) or not callable(getattr(cls, "open", None)):
        raise ConfigError(
            f"agent plugin {spec!r} is not a class with an open() method", key="plugin"
        )
    return cls


def build_agent(config: AgentConfig) -> Agent:
    if config.type == "echo":
        return EchoAgent(**config.options)
    if config.type == "websocket":
        assert config.url is not None  # checked by AgentConfig
        return WebSocketAgent(
            config.url,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            **config.options,
        )
    assert config.plugin is not None
    return load_plugin(config.plugin)(**config.options)


def build_agents(configs: list[AgentConfig]) -> dict[str, Agent]:
    """Every agent of the catalogue, built once at startup (a bad plugin fails the start)."""
    return {c.id: build_agent(c) for c in configs}
