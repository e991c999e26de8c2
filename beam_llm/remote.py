"""How every remote backend calls its service: the one retry policy.

All remote GenerateText backends (OpenAICompatible, VertexAI, Gemini) send
their requests through a `RemoteCaller`, and only through it, so they share
one behaviour, set from YAML (`RemotePolicy`):

- Up to `max_concurrency` requests in flight per worker process (a thread
  pool shared by every batch and DoFn thread of the process), instead of one
  synchronous request per batch.
- Retry only what can succeed on a second try: 429, 408, 5xx, dropped
  connections, timeouts (`Failure.retryable`). Everything else fails the row
  at once. The client libraries' own retries are turned off by the backends,
  so nothing retries twice.
- Exponential backoff with jitter between attempts, at least as long as the
  service's Retry-After (seconds or an HTTP date).
- A Retry-After is honoured by the whole process, not just the request that
  got it: no request starts before it expires (`_Gate`).
- Client-side adaptive throttling (the formula from Google's SRE book, as in
  Beam's AdaptiveThrottler): when many recent requests were turned away,
  requests are delayed locally, so an overloaded service sees less traffic.
- A per-row budget: at most `max_retries` retries and `deadline_secs` in all.
  Past either, the row fails with the type of its last error; it is never
  dropped and never raised, so one row cannot fail its batch.

Each call returns an `Outcome` carrying what the caller needs for metrics;
metrics are recorded by the caller on the DoFn thread, because Beam metrics
recorded on other threads are lost.
"""
import collections
import concurrent.futures
import dataclasses
import email.utils
import functools
import random
import threading
import time
from typing import Any, Callable, List, Optional

# Error types of failed rows (the `error_type` field of error rows).
RATE_LIMITED = 'rate_limited'  # 429 until retries or the deadline ran out.
TIMEOUT = 'timeout'  # No answer within timeout_secs (or a 408).
SERVER_ERROR = 'server_error'  # 5xx.
CONNECTION_ERROR = 'connection_error'  # Could not connect, or dropped.
BAD_RESPONSE = 'bad_response'  # An answer we cannot use (malformed, empty).
CLIENT_ERROR = 'client_error'  # 4xx other than 408/429: the request is wrong.
DEADLINE = 'deadline_exceeded'  # deadline_secs ran out before any answer.


@dataclasses.dataclass(frozen=True)
class RemotePolicy:
  """The YAML options every remote backend takes (see docs/remote.md)."""
  max_concurrency: int = 16
  max_retries: int = 5
  timeout_secs: float = 60.0
  deadline_secs: float = 600.0
  initial_backoff_secs: float = 1.0
  max_backoff_secs: float = 60.0
  # "K" of the SRE formula: throttle once fewer than 1/K of recent requests
  # were accepted. 2 lets a service that rejects half its traffic still get
  # all of it; beyond that, traffic is shed locally.
  overload_ratio: float = 2.0
  throttle_window_secs: float = 60.0

  def problems(self) -> List[tuple]:
    """(option, problem) pairs for values that make no sense."""
    out = []
    if self.max_concurrency < 1:
      out.append(('max_concurrency', 'must be at least 1'))
    if self.max_retries < 0:
      out.append(('max_retries', 'must be 0 or more'))
    for name in ('timeout_secs', 'deadline_secs', 'initial_backoff_secs',
                 'max_backoff_secs'):
      if getattr(self, name) <= 0:
        out.append((name, 'must be more than 0'))
    return out


@dataclasses.dataclass(frozen=True)
class Failure:
  """What one failed attempt means for the policy."""
  error_type: str
  msg: str
  retryable: bool = False
  retry_after: Optional[float] = None  # Seconds the service asked us to wait.
  status: Optional[int] = None

  @property
  def overloaded(self) -> bool:
    """Whether the service turned the request away (feeds the throttler)."""
    return self.status in (429, 503) or self.error_type == TIMEOUT


class BadResponse(Exception):
  """Raised by a backend for an answer it cannot use (no text, bad shape)."""


def classify_status(
    status: int, msg: str, retry_after: Optional[float] = None) -> Failure:
  """The policy's reading of an HTTP status code."""
  if status == 429:
    return Failure(RATE_LIMITED, msg, True, retry_after, status)
  if status == 408:
    return Failure(TIMEOUT, msg, True, retry_after, status)
  if status >= 500:
    return Failure(SERVER_ERROR, msg, True, retry_after, status)
  return Failure(CLIENT_ERROR, msg, False, None, status)


def parse_retry_after(value: Any, now: Optional[float] = None) -> Optional[float]:
  """Seconds to wait from a Retry-After header: delay-seconds or HTTP-date.

  Fractional seconds are accepted too (some services send them). Returns None
  when there is no usable value; never a negative number.
  """
  if value is None:
    return None
  text = str(value).strip()
  if not text:
    return None
  try:
    return max(0.0, float(text))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(text)
  except (TypeError, ValueError, IndexError):
    return None
  if when is None:
    return None
  return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_from_headers(headers: Any) -> Optional[float]:
  """Retry-After (or OpenAI's retry-after-ms) from a response's headers."""
  if not headers:
    return None
  try:
    ms = headers.get('retry-after-ms')
    if ms is not None:
      return max(0.0, float(ms) / 1000)
  except (TypeError, ValueError):
    pass
  return parse_retry_after(headers.get('retry-after'))


# Exception class names (anywhere in the MRO) of the HTTP stacks the clients
# use (httpx, requests, urllib3, the standard library), by what they mean.
# Names, not imports: each client brings a different stack.
_TIMEOUT_NAMES = frozenset({
    'TimeoutException', 'Timeout', 'TimeoutError', 'ReadTimeoutError',
    'ConnectTimeoutError', 'timeout', 'DeadlineExceeded'})
_CONNECTION_NAMES = frozenset({
    'ConnectionError', 'TransportError', 'ProtocolError', 'NetworkError',
    'NewConnectionError', 'MaxRetryError', 'ChunkedEncodingError',
    'RemoteDisconnected', 'IncompleteRead'})


_BAD_RESPONSE_NAMES = frozenset({
    'ParseError', 'DecodeError', 'JSONDecodeError', 'ValidationError'})


def generic_failure(exn: BaseException) -> Failure:
  """Classifies exceptions that are not a client's own HTTP status errors."""
  names = {c.__name__ for c in type(exn).__mro__}
  msg = f'{type(exn).__name__}: {exn}'
  if names & _TIMEOUT_NAMES:
    return Failure(TIMEOUT, msg, retryable=True)
  if names & _CONNECTION_NAMES:
    return Failure(CONNECTION_ERROR, msg, retryable=True)
  if names & _BAD_RESPONSE_NAMES or isinstance(
      exn, (ValueError, KeyError, TypeError, AttributeError, IndexError)):
    # Malformed JSON or an answer of the wrong shape. Not retried: the
    # service did answer, and only transport and overload errors are.
    return Failure(BAD_RESPONSE, msg)
  return Failure(CLIENT_ERROR, msg)


@dataclasses.dataclass
class Outcome:
  """The end of one request's life: a value, or the failure that ended it."""
  value: Any = None
  failure: Optional[Failure] = None
  attempts: int = 0
  rate_limited: int = 0  # 429 responses among the attempts.
  waited_secs: float = 0.0  # Backoff, Retry-After and throttling waits.
  latencies: List[float] = dataclasses.field(default_factory=list)
  from_cache: bool = False  # Read from cache_dir: nothing was sent.

  @property
  def retries(self) -> int:
    return max(0, self.attempts - 1)


class _Gate:
  """The time before which no request may start, in this process.

  Set from a service's Retry-After: the service said "not before", and it
  meant this client, not just the one request that got the 429.
  """
  def __init__(self):
    self._lock = threading.Lock()
    self._until = 0.0

  def block_for(self, secs: float) -> None:
    with self._lock:
      self._until = max(self._until, time.monotonic() + secs)

  @property
  def until(self) -> float:
    with self._lock:
      return self._until


class _Throttler:
  """Client-side adaptive throttling, after Google's SRE book (Handling
  Overload) and Beam's AdaptiveThrottler, over a sliding window:

      P(delay a request) = max(0, (requests - K * accepts) / (requests + 1))

  Unlike Beam's class, a request is counted when its answer is known, not
  when it is sent: with many requests in flight, counting them at send time
  makes a healthy service look like one that accepts nothing, and the first
  burst throttles itself. Requests delayed locally count as requests (not
  accepts), as the SRE formula has it, so shedding lasts while the service
  keeps refusing (each held-back attempt counts once, however many times it
  is checked again).
  """
  def __init__(self, window_secs: float, overload_ratio: float,
               rng: random.Random):
    self._window = window_secs
    self._bucket = max(window_secs / 60, 0.01)
    self._k = overload_ratio
    self._buckets = collections.deque()  # [bucket start, requests, accepts]
    self._requests = self._accepts = 0  # Sums over the buckets.
    self._lock = threading.Lock()
    self._random = rng

  def _add(self, requests: int, accepts: int) -> None:
    now = time.monotonic()
    start = now - now % self._bucket
    if not self._buckets or self._buckets[-1][0] != start:
      self._buckets.append([start, 0, 0])
    self._buckets[-1][1] += requests
    self._buckets[-1][2] += accepts
    self._requests += requests
    self._accepts += accepts

  def _totals(self):
    horizon = time.monotonic() - self._window
    while self._buckets and self._buckets[0][0] < horizon:
      _, requests, accepts = self._buckets.popleft()
      self._requests -= requests
      self._accepts -= accepts
    return self._requests, self._accepts

  def should_delay(self, count: bool = True) -> bool:
    """Whether to hold a request back now; `count` it as a request if so.

    A held-back request is checked again after a delay: only its first
    check counts, or one wait would inflate `requests` with every check.
    """
    with self._lock:
      requests, accepts = self._totals()
      p = max(0.0, (requests - self._k * accepts) / (requests + 1))
      delay = self._random.random() < p
      if delay and count:
        self._add(1, 0)
      return delay

  def record(self, accepted: bool) -> None:
    with self._lock:
      self._add(1, int(accepted))


class RemoteCaller:
  """Runs requests under a RemotePolicy; one per worker process and backend.

  `call_all(sends, classify)` runs `send(timeout_secs)` callables, up to
  max_concurrency at a time, each with its own retries, and returns one
  Outcome per callable, in order. It never raises for a request's failure.
  """
  def __init__(self, policy: RemotePolicy, rng: Optional[random.Random] = None):
    self.policy = policy
    self._gate = _Gate()
    self._random = rng or random.Random()
    self._throttler = _Throttler(
        policy.throttle_window_secs, policy.overload_ratio, self._random)
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=policy.max_concurrency, thread_name_prefix='beam_llm_remote')

  def call_all(
      self,
      sends: List[Callable[[float], Any]],
      classify: Callable[[BaseException], Failure]) -> List[Outcome]:
    return self.run_all([
        functools.partial(self.call, send, classify) for send in sends])

  def run_all(self, tasks: List[Callable[[], Any]]) -> list:
    """Runs zero-argument tasks (each may `call`) on the pool, in order."""
    futures = [self._pool.submit(task) for task in tasks]
    concurrent.futures.wait(futures)  # One wake-up, not one per request.
    return [f.result() for f in futures]

  def call(
      self,
      send: Callable[[float], Any],
      classify: Callable[[BaseException], Failure]) -> Outcome:
    """One request, with retries, backoff and throttling, within budget."""
    p = self.policy
    out = Outcome()
    deadline = time.monotonic() + p.deadline_secs
    while True:
      stop = self._wait_until_allowed(out, deadline)
      if stop is not None:
        # Keep the service's last word if there was one: it says more.
        out.failure = out.failure or stop
        break
      timeout = min(p.timeout_secs, deadline - time.monotonic())
      started = time.monotonic()
      out.attempts += 1
      try:
        out.value = send(timeout)
        out.failure = None
      except Exception as exn:  # pylint: disable=broad-except
        out.failure = classify(exn)
      out.latencies.append(time.monotonic() - started)
      failure = out.failure
      self._throttler.record(accepted=failure is None or not failure.overloaded)
      if failure is None:
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
      self._sleep(out, wait)
    return self._finish(out)

  def _wait_until_allowed(self, out: Outcome, deadline: float) -> Optional[Failure]:
    """Waits out any Retry-After and local throttling.

    Returns why the row must stop instead, if waiting would pass its deadline.
    """
    counted = False  # Whether the throttler has counted this attempt.
    while True:
      until = self._gate.until
      now = time.monotonic()
      if until > now:
        if until >= deadline:
          return Failure(
              RATE_LIMITED, f'the service asked to wait {until - now:.1f}s more '
              f'(Retry-After), past deadline_secs={self.policy.deadline_secs}')
        # A little jitter so that the waiting requests do not all start in
        # the same millisecond when the Retry-After ends.
        self._sleep(out, until - now + self._random.uniform(0, 0.05))
        continue
      if self._throttler.should_delay(count=not counted):
        counted = True
        delay = self.policy.initial_backoff_secs * self._random.uniform(0.5, 1.5)
        if now + delay >= deadline:
          return Failure(
              DEADLINE, 'throttled on this worker (the service refused most '
              f'recent requests) until deadline_secs={self.policy.deadline_secs}'
              ' ran out')
        self._sleep(out, delay)
        continue
      if now >= deadline:
        return Failure(DEADLINE, f'deadline_secs={self.policy.deadline_secs} ran out')
      return None

  def _backoff(self, attempts: int) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random."""
    p = self.policy
    cap = min(p.max_backoff_secs, p.initial_backoff_secs * 2**(attempts - 1))
    return cap / 2 + self._random.uniform(0, cap / 2)

  @staticmethod
  def _sleep(out: Outcome, secs: float) -> None:
    if secs > 0:
      time.sleep(secs)
      out.waited_secs += secs

  def _finish(self, out: Outcome) -> Outcome:
    """Turns the last failure into the row's failure, saying why we stopped."""
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
