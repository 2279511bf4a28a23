"""A Twilio stand-in speaking the exact wire protocol, for load tests and end-to-end tests.

- :mod:`~voice_gateway.sim.caller`: :class:`SimulatedCall` / :func:`place_call`: webhook,
  TwiML, Media Stream at real-time pace, Twilio's playout (marks, clear), status callback.
- :mod:`~voice_gateway.sim.twilio_api`: :class:`FakeTwilioApi`, the REST call-update endpoint.
- :mod:`~voice_gateway.sim.gateway`: :func:`running_gateway`, a real gateway on a free port.
- :mod:`~voice_gateway.sim.cli`: ``voice-gateway simulate``.

See docs/simulator.md.
"""

from __future__ import annotations

from voice_gateway.sim.caller import (
    CallConfig,
    CallResult,
    OutboundRecord,
    SimRegistry,
    SimulatedCall,
    TwimlPlan,
    parse_twiml,
    place_call,
)
from voice_gateway.sim.twilio_api import FakeTwilioApi

__all__ = [
    "CallConfig",
    "CallResult",
    "FakeTwilioApi",
    "OutboundRecord",
    "SimRegistry",
    "SimulatedCall",
    "TwimlPlan",
    "parse_twiml",
    "place_call",
]
