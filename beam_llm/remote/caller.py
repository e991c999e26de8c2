"""How every remote call is made: one event loop per process, one policy.

Generation, embeddings and vector stores send each request through a
`RemoteCaller` (one per worker process and backend), as a coroutine on the
process's one remote event loop (`run_on_loop`): a request in flight costs
a coroutine, not a thread, and every limit, budget and cache is touched
from that loop only, so none has a lock. A client without an async API
runs its blocking call with `in_thread` from the loop.

The policy (`RemoteCaller.call`), written once:
- Retry what can succeed on a second try (`Failure.retryable`, classified
  in failures.py): 429, 408, 5xx, dropped connections, timeouts, bodies cut
  off or malformed, empty answers. A request the service refuses as invalid
  is not retried. The client libraries' own retries are off, so nothing
  retries twice.
- Exponential backoff with jitter, at least the service's Retry-After,
  which holds back the whole process, not just the request that got it.
- `requests_per_minute` / `tokens_per_minute` budgets, the adaptive
  concurrency limit (limits.AdaptiveLimit) and client-side throttling (SRE)
  when most requests are refused.
- A per-request budget: `max_retries` retries and `deadline_secs` in all;
  past either the `Outcome` carries the last failure (the caller decides:
  an error row for the row's own problem, `ServiceOutage` for an outage).
- An exception `classify` does not recognise is a bug: raised.

Metrics are recorded by the callers on their DoFn thread from the Outcome
(Beam metrics recorded on other threads are lost).
"""
import asyncio
import concurrent.futures
import dataclasses
import functools
import math
import random
import threading
import time
from typing import Any, Awaitable, Callable, List, Optional, TypeVar

from beam_llm.remote import budgets
from beam_llm.remote import limits
from beam_llm.remote.failures import DEADLINE
from beam_llm.remote.failures import RATE_LIMITED
from beam_llm.remote.failures import Failure
from beam_llm.remote.policy import RemotePolicy

T = TypeVar('T')
Send = Callable[[float], Awaitable[Any]]  # timeout_secs -> the answer
Classify = Callable[[BaseException], Optional[Failure]]

_LOOP = None
_LOOP_LOCK = threading.Lock()
# Blocking client calls (`in_thread`): threads are made only as needed, so
# a high cap costs nothing; the adaptive limit bounds how many run.
_MOST_THREADS = 1024


def _process_loop() -> asyncio.AbstractEventLoop:
  """The process's remote event loop, started on first use (its thread is a
  daemon: it never keeps a worker process alive)."""
  global _LOOP
  with _LOOP_LOCK:
    if _LOOP is None:
      loop = asyncio.new_event_loop()
      loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
          max_workers=_MOST_THREADS, thread_name_prefix='beam_llm_blocking'))
      threading.Thread(target=loop.run_forever, daemon=True,
                       name='beam_llm_remote_loop').start()
      _LOOP = loop
    return _LOOP


def run_on_loop(coroutine: Awaitable[T]) -> 'concurrent.futures.Future[T]':
  """Starts a coroutine on the process's remote loop, from any thread."""
  return asyncio.run_coroutine_threadsafe(coroutine, _process_loop())


def run_blocking(coroutine: Awaitable[T]) -> T:
  """Runs a coroutine on the process's remote loop and waits for it (from a
  DoFn thread; never from the loop itself)."""
  return run_on_loop(coroutine).result()


async def in_thread(fn: Callable[..., T], *args, **kwargs) -> T:
  """A blocking client call, from the loop, on a thread of its own."""
  return await asyncio.get_running_loop().run_in_executor(
      None, functools.partial(fn, *args, **kwargs))


@dataclasses.dataclass
class Outcome:
  """The end of one request's life: a value, or the failure that ended it."""
  value: Any = None
  failure: Optional[Failure] = None
  attempts: int = 0
  rate_limited: int = 0  # 429 responses among the attempts.
  waited_secs: float = 0.0  # Backoff, Retry-After, budget and throttling waits.
  latencies: List[float] = dataclasses.field(default_factory=list)
  started: float = dataclasses.field(default_factory=time.monotonic)

  @property
  def retries(self) -> int:
    return max(0, self.attempts - 1)


class RemoteCaller:
  """Runs requests under a RemotePolicy; one per worker process and backend,
  used from the process's remote loop only.

  `usage(value)` may return the tokens an answer used (tokens_per_minute).
  """
  # The SRE throttler's K and window (see budgets.Throttler).
  OVERLOAD_RATIO = 2.0
  THROTTLE_WINDOW_SECS = 60.0

  def __init__(self, policy: RemotePolicy, rng: Optional[random.Random] = None,
               usage: Optional[Callable[[Any], int]] = None):
    self.policy = policy
    self._random = rng or random.Random()
    self._gate = budgets.Gate()
    self._throttler = budgets.Throttler(
        self.THROTTLE_WINDOW_SECS, self.OVERLOAD_RATIO, self._random)
    self.limit = limits.AdaptiveLimit(policy.max_concurrency)
    self._requests = budgets.optional_budget(policy.requests_per_minute)
    self._tokens = budgets.optional_budget(policy.tokens_per_minute)
    self._usage = usage
    self._last_answer = -math.inf  # When the service last answered.

  def is_outage(self, out: Outcome) -> bool:
    """Whether a request that failed for good means the service is down
    (fail the bundle: `ServiceOutage`) rather than a problem of its row (an
    error row). 429s and a spent deadline always mean the service; a 5xx,
    timeout or dropped connection does too unless the service answered
    other requests of this process meanwhile (then it is this row: a
    prompt that crashes or stalls the server)."""
    f = out.failure
    if f is None or not f.outage:
      return False
    return f.error_type in (RATE_LIMITED, DEADLINE) or (
        self._last_answer < out.started)

  async def call(self, send: Send, classify: Classify) -> Outcome:
    """One request, with retries, backoff and throttling, within budget.
    A failure is in the Outcome; an exception `classify` does not know
    (None) is raised."""
    p = self.policy
    out = Outcome()
    deadline = time.monotonic() + p.deadline_secs
    while True:
      stop = await self._wait_until_allowed(out, deadline)
      if stop is not None:
        # Keep the service's last word if there was one: it says more.
        out.failure = out.failure or stop
        break
      token = await self.limit.acquire()
      if self._held(time.monotonic())[0] > 0:
        # A Retry-After came in, or the budgets ran out, while this request
        # waited for a slot.
        self.limit.cancel(token)
        continue
      timeout = max(0.001, min(p.timeout_secs, deadline - time.monotonic()))
      started = time.monotonic()
      out.attempts += 1
      if self._requests:
        self._requests.take(1)
      try:
        out.value, failure = await send(timeout), None
      except Exception as exn:  # pylint: disable=broad-except
        failure = classify(exn)
        if failure is None:  # Not the service's doing: a bug. Raise it.
          self.limit.release(time.monotonic() - started, limits.FAULT, token)
          raise
      latency = time.monotonic() - started
      out.failure = failure
      out.latencies.append(latency)
      self.limit.release(
          latency, limits.OK if failure is None else failure.signal, token)
      self._throttler.record(accepted=failure is None or not failure.overloaded)
      if failure is None:
        self._last_answer = time.monotonic()
        if self._tokens and self._usage:
          self._tokens.take(self._usage(out.value) or 0)
        return out
      if failure.status == 429:
        out.rate_limited += 1
      if failure.retry_after is not None:
        self._gate.block_for(failure.retry_after)
      if not failure.retryable or out.retries >= p.max_retries:
        break
      wait = max(self._backoff(out.attempts), failure.retry_after or 0.0)
      if time.monotonic() + wait >= deadline:
        break
      await self._sleep(out, wait)
    return self._finish(out)

  async def _wait_until_allowed(self, out: Outcome, deadline: float
                                ) -> Optional[Failure]:
    """Waits out any Retry-After, budgets and local throttling; returns why
    the request must stop instead, if waiting would pass its deadline."""
    counted = False  # Whether the throttler has counted this attempt.
    while True:
      now = time.monotonic()
      wait, why = self._held(now)
      if wait > 0:
        if now + wait >= deadline:
          return Failure(
              RATE_LIMITED, f'{why}: {wait:.1f}s more, past '
              f'deadline_secs={self.policy.deadline_secs}')
        # A little jitter so that the waiting requests do not all start in
        # the same millisecond when the wait ends.
        await self._sleep(out, wait + self._random.uniform(0, 0.05))
        continue
      if self._throttler.should_delay(count=not counted):
        counted = True
        delay = self.policy.initial_backoff_secs * self._random.uniform(0.5, 1.5)
        if now + delay >= deadline:
          return Failure(
              DEADLINE, 'throttled on this worker (the service refused most '
              f'recent requests) until deadline_secs={self.policy.deadline_secs}'
              ' ran out')
        await self._sleep(out, delay)
        continue
      if now >= deadline:
        return Failure(DEADLINE, f'deadline_secs={self.policy.deadline_secs} ran out')
      return None

  def _held(self, now: float):
    """(seconds no request may start for, why): Retry-After and budgets."""
    wait = self._gate.until - now
    why = 'the service asked to wait (Retry-After)'
    for budget, name in ((self._requests, 'requests_per_minute'),
                         (self._tokens, 'tokens_per_minute')):
      if budget:
        need = budget.wait_secs(1 if name == 'requests_per_minute' else 0)
        if need > wait:
          wait, why = need, f'{name} budget'
    return wait, why

  def _backoff(self, attempts: int) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random."""
    p = self.policy
    cap = min(p.max_backoff_secs, p.initial_backoff_secs * 2**(attempts - 1))
    return cap / 2 + self._random.uniform(0, cap / 2)

  @staticmethod
  async def _sleep(out: Outcome, secs: float) -> None:
    if secs > 0:
      await asyncio.sleep(secs)
      out.waited_secs += secs

  def _finish(self, out: Outcome) -> Outcome:
    """Turns the last failure into the request's failure, saying why we
    stopped."""
    p = self.policy
    last = out.failure
    if out.attempts == 0:  # Stopped before any attempt (Retry-After, throttling).
      return out
    if not last.retryable:
      why = ''
    elif out.retries >= p.max_retries:
      why = f' (gave up after {out.attempts} attempts: max_retries={p.max_retries})'
    else:
      why = (f' (gave up after {out.attempts} attempts: the next retry would '
             f'pass deadline_secs={p.deadline_secs})')
    out.failure = dataclasses.replace(last, msg=last.msg + why)
    return out
