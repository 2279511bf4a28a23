"""The turn bridge: caller audio -> turns -> agent -> answer audio, with barge-in and call control.

Per frame (``on_audio``) the bridge only runs the endpointer; everything that awaits (the
agent, history writes, Twilio REST) happens on the bridge's worker task, one job at a time
(a caller turn, or keypad input). History and counters are written at turn boundaries, never
per frame, by a background flush: the next answer does not wait for them (on a slow Redis it
would wait for their round trips). Flushes run one after another, so the history keeps its
order, and a hang-up, transfer or stop waits for them before it writes the rest.

Barge-in: when the caller has spoken for the barge-in threshold while an answer is playing or
being produced, the bridge sends ``clear``, cancels the answer, tells the agent how much of it
the caller heard (from the mark-driven playback clock), and records the cut in the history.

An agent that fails (``AgentError``) is replaced by its configured ``fallback`` agent for the
rest of the call, and the failed turn is answered again; with no fallback, or if the fallback
fails too, the call is hung up and the session ends ``error`` - never a silent hung line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from voice_gateway.agents.base import (
    Agent,
    AgentAudio,
    AgentContext,
    AgentEvent,
    AgentText,
    AudioFormat,
    CallerTurn,
    Conversation,
    HangUp,
    SummaryUpdate,
    Transfer,
    cut_history,
)
from voice_gateway.audio.endpointer import (
    FRAME_MS,
    BargeInCandidate,
    Endpointer,
    EndpointerConfig,
    SpeechStarted,
    TurnEnded,
)
from voice_gateway.audio.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from voice_gateway.audio.resample import Resampler, resample_all
from voice_gateway.errors import AgentError, GatewayError, StoreUnavailable
from voice_gateway.metrics import Metrics
from voice_gateway.sessions.lifecycle import Lifecycle, with_retry
from voice_gateway.sessions.models import EndReason, Message, Session
from voice_gateway.settings import AgentConfig
from voice_gateway.telephony.bridge import CallControl, CallInfo

log = logging.getLogger(__name__)

PLAYOUT_SLACK_SECONDS = 5.0
#: Agent audio queued ahead of what the caller has heard, at most (about 80 KB of mu-law).
MAX_QUEUED_MS = 10_000
#: At the end of a call, history writes retry this long through a store outage.
STOP_RETRY_SECONDS = 15.0
#: A hang-up or transfer under way when the stream ends may finish for this long.
ENDING_WAIT_SECONDS = 10.0


def to_agent_audio(ulaw: bytes, fmt: AudioFormat) -> bytes:
    """Telephone audio (mu-law 8 kHz) in the conversation's format."""
    if fmt.encoding == "mulaw":
        return ulaw
    pcm = ulaw_to_pcm16(ulaw)
    if fmt.sample_rate != 8000:
        pcm = resample_all(pcm, 8000, fmt.sample_rate)
    return pcm.astype("<i2").tobytes()


class FromAgentAudio:
    """Streaming conversion of an answer's audio back to mu-law 8 kHz."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self._resampler = Resampler(fmt.sample_rate, 8000) if fmt.encoding == "pcm16" else None
        self._odd = b""

    def convert(self, audio: bytes) -> bytes:
        if self._resampler is None:
            return audio
        data = self._odd + audio
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return pcm16_to_ulaw(self._resampler.process(data[:cut]))

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        return pcm16_to_ulaw(self._resampler.flush())


@dataclass
class _Job:
    kind: str  # "turn" | "dtmf"
    turn: TurnEnded | None = None
    digits: str = ""
    ended_at: float = 0.0


class AgentBridge:
    """A ``CallBridge`` that runs a session's conversation with its agent."""

    def __init__(
        self,
        session: Session,
        agent_config: AgentConfig,
        agents: dict[str, Agent],
        agent_configs: dict[str, AgentConfig],
        lifecycle: Lifecycle,
        metrics: Metrics,
        turn_config: EndpointerConfig,
        *,
        max_history: int = 50,
    ) -> None:
        self.session = session
        self.agent_config = agent_config
        self._agents = agents
        self._configs = agent_configs
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.endpointer = Endpointer(turn_config)
        self.max_history = max_history
        self.conversation: Conversation | None = None
        self.control: CallControl | None = None
        self.call: CallInfo | None = None
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._answer: asyncio.Task[None] | None = None
        self._answer_turn = 0
        self._answer_start_pos = 0
        self._next_id = 0
        self._pending: list[Message] = []
        self._counters = {"turns": 0, "interruptions": 0}
        self._played: dict[str, asyncio.Event] = {}
        self._digits: list[str] = []
        self._gather_timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None  # the latest background flush
        self._ending = False  # the worker is hanging up or transferring the call
        self._ended = False

    # -- CallBridge ---------------------------------------------------------------------------

    async def start(self, call: CallInfo, control: CallControl) -> None:
        self.call = call
        self.control = control
        self._worker = asyncio.create_task(self._work(), name=f"bridge-{call.call_sid}")

    def on_audio(self, ulaw: bytes) -> None:
        events = self.endpointer.push(ulaw)
        if not events:
            return
        for event in events:
            if isinstance(event, TurnEnded):
                self._jobs.put_nowait(_Job("turn", turn=event, ended_at=time.perf_counter()))
            elif isinstance(event, BargeInCandidate):
                if self._speaking():
                    self._barge_in()
            elif isinstance(event, SpeechStarted):
                pass

    def audio_slack_ms(self) -> float:
        """How long the caller's next frame may wait without delaying a decision: until the
        earliest frame that could end the caller's turn, or, while an answer plays or is being
        made, barge in on it (80 ms of speech by default, so up to 60 ms while the caller is
        quiet; 0 once the caller is talking over the answer)."""
        frames = self.endpointer.frames_until_decision(self._speaking())
        return math.inf if frames is None else float((frames - 1) * FRAME_MS)

    def on_dtmf(self, digit: str) -> None:
        if not self.agent_config.dtmf_gather:
            self._jobs.put_nowait(_Job("dtmf", digits=digit))
            return
        if digit == "#":
            self._flush_digits()
            return
        self._digits.append(digit)
        if self._gather_timer is not None:
            self._gather_timer.cancel()
        loop = asyncio.get_running_loop()
        self._gather_timer = loop.call_later(
            self.agent_config.dtmf_timeout_seconds, self._flush_digits
        )

    def on_played(self, label: str) -> None:
        event = self._played.pop(label, None)
        if event is not None:
            event.set()

    async def stop(self, reason: str) -> None:
        if self._ended:  # a drained call is stopped by shutdown(), then again as its stream ends
            return
        self._ended = True
        if self._gather_timer is not None:
            self._gather_timer.cancel()
        if self._ending and self._worker is not None:
            # Twilio ends the stream as soon as it hangs up or redirects the call, often before
            # the gateway has recorded why: let that finish, or the session ends "completed"
            # by the status callback instead of "error", "hangup-by-agent" or "transferred".
            await asyncio.wait([self._worker], timeout=ENDING_WAIT_SECONDS)
        for task in (self._answer, self._worker):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._flush_history(retry_budget=STOP_RETRY_SECONDS)
        if self.conversation is not None:
            with contextlib.suppress(Exception):
                await self.conversation.close(reason)

    # -- per-frame helpers (sync) ------------------------------------------------------------

    def _speaking(self) -> bool:
        answering = self._answer is not None and not self._answer.done()
        return answering or (self.control is not None and self.control.queued_ms > 0)

    def _barge_in(self) -> None:
        assert self.control is not None
        self.control.clear()  # moves the playback clock to what the caller heard
        heard = max(0, self.control.played_ms - self._answer_start_pos)
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        turn_id = self._answer_turn
        self._counters["interruptions"] += 1
        self.metrics.barge_ins.inc()
        self._pending.append(
            self.lifecycle.message(
                "event",
                "caller interrupted the answer",
                turn_id=turn_id,
                metadata={"heard_ms": heard},
            )
        )
        log.info("barge-in: answer to turn %d cut after %d ms heard", turn_id, heard)
        conversation = self.conversation
        if conversation is not None:
            task = asyncio.create_task(self._tell_interrupted(conversation, turn_id, heard))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _tell_interrupted(self, conversation: Conversation, turn_id: int, heard: int) -> None:
        try:
            await conversation.interrupted(turn_id, heard)
        except AgentError as exc:
            log.warning("agent could not take the interruption: %s", exc.message)

    def _flush_digits(self) -> None:
        if self._gather_timer is not None:
            self._gather_timer.cancel()
            self._gather_timer = None
        if self._digits:
            self._jobs.put_nowait(_Job("dtmf", digits="".join(self._digits)))
            self._digits.clear()

    # -- the worker ---------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            await self._open_conversation()
            while not self._ended:
                job = await self._jobs.get()
                self._next_id += 1
                self._answer_turn = self._next_id
                await self._answer_job(job, self._next_id)
                if self._answer is not None and self._answer.cancelled() and self._ended:
                    return
                self._flush_soon()
        except _CallOver:
            return

    async def _open_conversation(self) -> None:
        try:
            self.conversation = await self._open(self.agent_config)
        except AgentError as exc:
            await self._agent_failed(exc)

    async def _open(self, config: AgentConfig) -> Conversation:
        history = await self.lifecycle.history(self.session.id, 0, 10_000)
        documents = await self.lifecycle.store.get_documents(self.session.id)
        context = AgentContext(
            session=self.session,
            history=cut_history(self.session, history, self.max_history),
            tools=self.session.tools,
            documents=documents,
        )
        conversation = await self._agents[config.id].open(context)
        log.info(
            "agent %s conversation open (%s/%d Hz)",
            config.id,
            conversation.audio_format.encoding,
            conversation.audio_format.sample_rate,
        )
        return conversation

    async def _agent_failed(self, exc: AgentError) -> None:
        """Switch to the fallback agent, or end the call: never a silent hung line."""
        log.warning("agent %s failed: %s", self.agent_config.id, exc.message)
        self._pending.append(self.lifecycle.message("event", f"agent failed: {exc.message}"))
        fallback = self._configs.get(self.agent_config.fallback or "")
        if self.conversation is not None:
            with contextlib.suppress(Exception):
                await self.conversation.close("agent failed")
            self.conversation = None
        if fallback is not None and fallback.id != self.agent_config.id:
            try:
                self.agent_config = fallback
                self.conversation = await self._open(fallback)
                self._pending.append(
                    self.lifecycle.message("event", f"switched to fallback agent {fallback.id}")
                )
                return
            except AgentError as again:
                log.warning("fallback agent %s failed too: %s", fallback.id, again.message)
        await self._flush_history()
        assert self.control is not None
        self._ending = True
        await self.control.hang_up(EndReason.ERROR)
        raise _CallOver

    async def _answer_job(self, job: _Job, answer_id: int) -> None:
        """Answer ``job`` on the answer task, which a barge-in cancels. An agent failure is
        handled here, on the worker, so a barge-in cannot cut that short (and leave the call
        with a dead agent): the fallback answers the job again, or the call is hung up."""
        for attempt in (1, 2):
            conversation = self.conversation
            if conversation is None:
                raise _CallOver
            self._answer = asyncio.create_task(
                self._run_job(conversation, job, answer_id, retry=attempt > 1)
            )
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._answer
                return
            except AgentError as exc:
                await self._agent_failed(exc)  # raises _CallOver when there is no way on

    async def _run_job(
        self, conversation: Conversation, job: _Job, answer_id: int, *, retry: bool
    ) -> None:
        if job.kind == "turn":
            await self._answer_turn_job(conversation, job, answer_id, retry=retry)
        else:
            await self._dtmf_job(conversation, job, answer_id)

    async def _answer_turn_job(
        self, conversation: Conversation, job: _Job, answer_id: int, *, retry: bool
    ) -> None:
        assert job.turn is not None and self.control is not None
        turn = job.turn
        if not retry:
            self._counters["turns"] += 1
            self._pending.append(
                self.lifecycle.message(
                    "user",
                    f"[caller audio {turn.duration_ms} ms]",
                    turn_id=answer_id,
                    metadata={
                        "start_ms": turn.start_ms,
                        "end_ms": turn.end_ms,
                        "reason": turn.reason,
                    },
                )
            )
        fmt = conversation.audio_format
        caller_turn = CallerTurn(
            answer_id, to_agent_audio(turn.audio_ulaw, fmt), turn.duration_ms, fmt
        )
        await self._play_answer(conversation.answer(caller_turn), fmt, answer_id, job.ended_at)

    async def _dtmf_job(self, conversation: Conversation, job: _Job, answer_id: int) -> None:
        self._pending.append(
            self.lifecycle.message(
                "event", f"keypad {job.digits}", turn_id=answer_id, metadata={"dtmf": job.digits}
            )
        )
        events = conversation.dtmf(job.digits, answer_id)
        await self._play_answer(events, conversation.audio_format, answer_id, None)

    async def _play_answer(
        self,
        events: AsyncIterator[AgentEvent],
        fmt: AudioFormat,
        answer_id: int,
        ended_at: float | None,
    ) -> None:
        control = self.control
        assert control is not None
        decoder = FromAgentAudio(fmt)
        self._answer_start_pos = control.played_ms + control.queued_ms
        first_audio = True
        spoken: list[str] = []
        async for event in events:
            if isinstance(event, AgentAudio):
                ulaw = decoder.convert(event.audio)
                if ulaw:
                    control.play(ulaw)
                    if first_audio and ended_at is not None:
                        self.metrics.turn_response_seconds.observe(time.perf_counter() - ended_at)
                    first_audio = False
                # Backpressure: an agent that streams far ahead of playback waits (and stops
                # being read), so a call's queued audio stays bounded.
                while control.queued_ms > MAX_QUEUED_MS:  # noqa: ASYNC110 - only while >10 s ahead
                    await asyncio.sleep(0.1)
            elif isinstance(event, AgentText):
                if event.role == "user":
                    self._set_transcript(answer_id, event.text)
                else:
                    spoken.append(event.text)
            elif isinstance(event, SummaryUpdate):
                await self.lifecycle.set_summary(self.session.id, event.summary)
            elif isinstance(event, HangUp):
                tail = decoder.flush()
                if tail:
                    control.play(tail)
                self._record_answer(answer_id, spoken)
                await self._wait_played(f"t{answer_id}")
                await self._flush_history()
                self._ending = True
                await control.hang_up(EndReason.HANGUP_BY_AGENT)
                raise _CallOver
            elif isinstance(event, Transfer):
                target = event.target or self.agent_config.transfer_to
                if not target:
                    log.warning("agent asked for a transfer but no target is configured")
                    continue
                self._record_answer(answer_id, spoken)
                await self._wait_played(f"t{answer_id}")
                self._pending.append(self.lifecycle.message("event", f"transferred to {target}"))
                await self._flush_history()
                self._ending = True
                await control.transfer(target)
                raise _CallOver
        tail = decoder.flush()
        if tail:
            control.play(tail)
        control.end_of_answer(f"t{answer_id}")
        self._record_answer(answer_id, spoken)

    def _record_answer(self, answer_id: int, spoken: list[str]) -> None:
        if spoken:
            self._pending.append(
                self.lifecycle.message("assistant", " ".join(spoken), turn_id=answer_id)
            )

    def _set_transcript(self, answer_id: int, text: str) -> None:
        for msg in self._pending:
            if msg.turn_id == answer_id and msg.role == "user":
                msg.metadata["audio"] = msg.content
                msg.content = text
                return

    async def _wait_played(self, label: str) -> None:
        """Let the answer's last audio finish playing (its mark comes back) before acting."""
        control = self.control
        assert control is not None
        done = asyncio.Event()
        self._played[label] = done
        control.end_of_answer(label)
        timeout = control.queued_ms / 1000 + PLAYOUT_SLACK_SECONDS
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            log.warning("playback of %s not confirmed within %.1fs; going on", label, timeout)

    def _flush_soon(self) -> None:
        """Flush in the background, after the flushes already started."""
        self._flusher = asyncio.create_task(
            self._flush_after(self._flusher), name=f"history-{self.session.id}"
        )

    async def _flush_after(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # it logs its own failures
        await self._write_history()

    async def _flush_history(self, *, retry_budget: float = 0.0) -> None:
        """Write pending history and counters now, after any background flush in flight."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        await self._write_history(retry_budget=retry_budget)

    async def _write_history(self, *, retry_budget: float = 0.0) -> None:
        """Write pending history and counters. If the store is down, they stay pending for
        the next flush (turn boundaries); the last flush retries for up to ``retry_budget``."""
        pending, self._pending = self._pending, []
        counters = {k: v for k, v in self._counters.items() if v}
        self._counters = dict.fromkeys(self._counters, 0)
        sid = self.session.id
        try:
            if pending or counters:
                await with_retry(
                    lambda: self.lifecycle.append_messages(sid, pending, counters),
                    what="history write",
                    budget_seconds=retry_budget,
                )
        except StoreUnavailable as exc:
            log.warning(
                "history kept for the next flush (%s): %d messages", exc.message, len(pending)
            )
            self._pending[:0] = pending
            for key, value in counters.items():
                self._counters[key] += value
        except GatewayError as exc:  # the session was completed meanwhile: nowhere to write
            log.warning("history not recorded (%s): %d messages", exc.message, len(pending))


class _CallOver(Exception):
    """The call was hung up or transferred: the worker stops."""
