"""The built-in echo agent: plays each caller turn back. The whole loop works with no service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from voice_gateway.agents.base import (
    Agent,
    AgentAudio,
    AgentContext,
    AgentEvent,
    AgentText,
    CallerTurn,
    Conversation,
    HangUp,
    Transfer,
)


class EchoConversation(Conversation):
    """Echoes audio; keypad ``*`` hangs up and ``0`` transfers (handy for testing call control)."""

    def __init__(self, hangup_digit: str | None = "*", transfer_digit: str | None = "0") -> None:
        self.hangup_digit = hangup_digit
        self.transfer_digit = transfer_digit
        self.digits: list[str] = []

    async def answer(self, turn: CallerTurn) -> AsyncIterator[AgentEvent]:
        yield AgentText(f"(echo of turn {turn.turn_id}, {turn.duration_ms} ms)")
        yield AgentAudio(turn.audio)

    async def dtmf(self, digits: str, turn_id: int) -> AsyncIterator[AgentEvent]:
        self.digits.append(digits)
        yield AgentText(f"(keypad {digits})")
        if self.hangup_digit is not None and digits == self.hangup_digit:
            yield HangUp("caller pressed the hang-up key")
        elif self.transfer_digit is not None and digits == self.transfer_digit:
            yield Transfer()


class EchoAgent(Agent):
    def __init__(self, **options: Any) -> None:
        self.options = options

    async def open(self, context: AgentContext) -> Conversation:
        return EchoConversation(
            hangup_digit=self.options.get("hangup_digit", "*"),
            transfer_digit=self.options.get("transfer_digit", "0"),
        )
