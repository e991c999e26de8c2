"""How every remote backend calls its service: the one call policy.

All remote backends (GenerateText's OpenAICompatible, VertexAI, Gemini, and
any other remote client, e.g. embeddings) send their requests through a
`RemoteCaller`, and only through it, so they share one behaviour, set from
YAML by the options of `RemotePolicy` (declared here once; a backend gets
them with `@with_policy` and builds the policy with `from_options`):

- Requests flow continuously on a thread pool shared by every bundle and
  DoFn thread of the process — or, for a backend with an async client, on
  one event loop thread (`submit_async` / `call_async`: a thread per
  request in flight costs CPU at hundreds in flight); how many are in
  flight adapts to the service (remote_limits.AdaptiveLimit), capped by
  `max_concurrency`. Both drivers carry out the same policy
  (`RemoteCaller._attempts`), written once.
- Retry what can succeed on a second try (`Failure.retryable`): 429, 408,
  5xx, dropped connections, timeouts, bodies cut off or malformed, empty
  answers. A request the service refuses as invalid is not retried,
  whatever its status code. The client libraries' own retries are turned
  off by the backends, so nothing retries twice.
- Exponential backoff with jitter between attempts, at least as long as the
  service's Retry-After (seconds or an HTTP date), which holds back the
  whole process, not just the request that got it.
- `requests_per_minute` / `tokens_per_minute` budgets, and client-side
  adaptive throttling (Google SRE book) when most requests are refused.
- A per-row budget: at most `max_retries` retries and `deadline_secs` in all.
  Past either, the row fails with the type of its last error; it is never
  dropped, so one row cannot fail its batch.
- Only failures of the service or the network become failed rows. An
  exception the backend's `classify` does not recognise is a bug, raised.

Each call returns an `Outcome` carrying what the caller needs for metrics;
metrics are recorded by the caller on the DoFn thread, because Beam metrics
recorded on other threads are lost.
"""
import asyncio
import concurrent.futures
import dataclasses
import email.utils
import inspect
import random
import re
import threading
import time
from typing import Any, Awaitable, Callable, Generator, List, Mapping, Optional

from beam_llm import _config
from beam_llm import remote_limits

# Error types of failed rows (the `error_type` field of error rows).
RATE_LIMITED = 'rate_limited'  # 429 until retries or the deadline ran out.
TIMEOUT = 'timeout'  # No answer within timeout_secs (or a 408).
SERVER_ERROR = 'server_error'  # 5xx.
CONNECTION_ERROR = 'connection_error'  # Could not connect, or dropped.
BAD_RESPONSE = 'bad_response'  # An answer we cannot use (malformed, empty).
CLIENT_ERROR = 'client_error'  # 4xx other than 408/429: the request is wrong.
DEADLINE = 'deadline_exceeded'  # deadline_secs ran out before any answer.


def _option(default, doc: str):
  return dataclasses.field(default=default, metadata={'doc': doc})


@dataclasses.dataclass(frozen=True)
class RemotePolicy:
  """The options every remote backend takes, declared here once.

  Backends get them in their signature and documentation with
  `with_policy` (below) and build the policy with `RemotePolicy.from_options`.
  """
  max_concurrency: int = _option(
      256, 'Most requests in flight at once per worker process. The number '
      'actually in flight adapts at run time: it starts at 32 (or the cap), grows while the '
      'service keeps up and shrinks when it turns requests away (429, 503, '
      'timeouts) or its latency grows (requests queueing); this is its cap.')
  max_retries: int = _option(
      5, 'Most retries per row after its first attempt. Transient faults are '
      'retried: 429, 408, 5xx, dropped connections, timeouts, and answers cut '
      'off or malformed; a request the service refuses as invalid is not.')
  timeout_secs: float = _option(
      60.0, 'Longest wait for one answer before the attempt counts as a '
      'timeout.')
  deadline_secs: float = _option(
      600.0, 'Most time one row may take, from its first attempt, including '
      'retries, backoff and waits for Retry-After and budgets.')
  initial_backoff_secs: float = _option(
      1.0, 'Backoff before the first retry; it doubles with each retry (with '
      "jitter), and is at least the service's Retry-After.")
  max_backoff_secs: float = _option(
      60.0, 'Longest backoff between two attempts (a longer Retry-After is '
      'still honoured).')
  requests_per_minute: Optional[float] = _option(
      None, 'Most requests (attempts) per minute per worker process, as '
      "providers publish their limits. Defaults to none (no limit).")
  tokens_per_minute: Optional[float] = _option(
      None, 'Most tokens (prompt + generated, as the service reports them) '
      'per minute per worker process. Defaults to none (no limit).')
  cache: Optional[bool] = _option(
      None, 'Send identical requests (same backend, target, model, prompt and '
      'parameters) once per worker and reuse the answer. Defaults to on, '
      'except when sampling without a `seed` in generation_config (identical '
      'prompts should then get independent samples).')
  cache_dir: Optional[str] = _option(
      None, 'Directory (local, gs://, s3://, ...) that keeps answers across '
      'runs: a re-run after a crash does not pay again for requests that '
      'already succeeded. A file that cannot be read is a miss. Defaults to '
      'none (memory only).')

  @classmethod
  def from_options(cls, owner: str, options: Mapping[str, Any]) -> 'RemotePolicy':
    """The policy from a backend's keyword options; fails on bad values."""
    policy = cls(**options)
    for key, problem in policy.problems():
      _config.fail(owner, f'model_handler.config.{key}', problem)
    return policy

  def problems(self) -> List[tuple]:
    """(option, problem) pairs for values that make no sense."""
    out = []
    if self.max_concurrency < 1:
      out.append(('max_concurrency', 'must be at least 1'))
    if self.max_retries < 0:
      out.append(('max_retries', 'must be 0 or more'))
    for name in ('timeout_secs', 'deadline_secs', 'initial_backoff_secs',
                 'max_backoff_secs', 'requests_per_minute', 'tokens_per_minute'):
      value = getattr(self, name)
      if value is not None and value <= 0:
        out.append((name, 'must be more than 0'))
    return out


def policy_doc() -> str:
  """The `Args:` lines of the policy options, for a backend's docstring."""
  lines = []
  for f in dataclasses.fields(RemotePolicy):
    text = f.metadata['doc']
    if f.default is not None and 'Defaults to' not in text:
      default = str(f.default).lower() if isinstance(f.default, bool) else f.default
      text += f' Defaults to {default:g}.' if isinstance(
          default, (int, float)) else f' Defaults to {default}.'
    words, line = text.split(), f'    {f.name}:'
    for word in words:
      if len(line) + 1 + len(word) > 78:
        lines.append(line)
        line = '      ' + word
      else:
        line += ' ' + word
    lines.append(line)
  return '\n'.join(lines)


def with_policy(cls):
  """Class decorator for a remote backend whose `__init__` takes `**policy`.

  Puts the RemotePolicy options into its signature (so config checks and
  the generated reference know them) and its docstring's `Args:`.
  """
  init = cls.__init__
  sig = inspect.signature(init)
  params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
  hints = dict(getattr(init, '__annotations__', {}))
  tail = [p for p in params if p.name in ('generation', 'batching')]
  params = [p for p in params if p not in tail]
  for f in dataclasses.fields(RemotePolicy):
    params.append(inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
        annotation=f.type))
    hints[f.name] = f.type
  init.__signature__ = sig.replace(parameters=params + tail)
  init.__annotations__ = hints
  cls.__doc__ = cls.__doc__.rstrip() + '\n' + policy_doc() + '\n'
  return cls


@dataclasses.dataclass(frozen=True)
class Failure:
  """What one failed attempt means for the policy."""
  error_type: str
  msg: str
  retryable: bool = False
  retry_after: Optional[float] = None  # Seconds the service asked us to wait.
  status: Optional[int] = None
  # The service refused the request as invalid: the same request would be
  # refused again (a backend may try another form of it, e.g. structured
  # output, and remember).
  refused: bool = False

  @property
  def overloaded(self) -> bool:
    """Whether the service turned the request away (feeds the throttler)."""
    return self.status in (429, 503) or self.error_type == TIMEOUT

  @property
  def signal(self) -> str:
    """What this failure says about the service's load (AdaptiveLimit)."""
    if self.status == 429 or self.retry_after is not None:
      return remote_limits.OVERLOAD
    if self.status == 503:
      return remote_limits.BUSY
    if self.error_type == TIMEOUT:
      return remote_limits.TIMEOUT
    return remote_limits.FAULT


class BadResponse(Exception):
  """Raised by a backend for an answer it cannot use (no text, bad shape).

  Retried by default: a body cut off in transit, or an empty answer from an
  overloaded server, is as transient as a 5xx. `retryable=False` for answers
  that would come back the same (e.g. the model's explicit refusal).
  """
  def __init__(self, msg: str, retryable: bool = True):
    super().__init__(msg)
    self.retryable = retryable


# Messages of a request the service refused as invalid, whatever the status
# (llama.cpp's server answers a schema it does not take with a 500 and a
# pydantic message): sending it again gets the same answer.
_VALIDATION = re.compile(
    r'validation error|Input should be|Field required|Extra inputs are not '
    r'permitted|invalid_request_error|not supported|unsupported|Unrecognized '
    r'request argument|INVALID_ARGUMENT', re.I)


def is_refusal(msg: str) -> bool:
  """Whether an error message says the request itself is invalid."""
  return bool(_VALIDATION.search(msg or ''))


def classify_status(
    status: int, msg: str, retry_after: Optional[float] = None) -> Failure:
  """The policy's reading of an HTTP status code (and its message)."""
  if status == 429:
    return Failure(RATE_LIMITED, msg, True, retry_after, status)
  if status == 408:
    return Failure(TIMEOUT, msg, True, retry_after, status)
  if status >= 500 and not is_refusal(msg):
    return Failure(SERVER_ERROR, msg, True, retry_after, status)
  return Failure(CLIENT_ERROR, msg, False, None, status, refused=True)


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
    'RemoteDisconnected', 'IncompleteRead', 'ContentDecodingError',
    'ClientConnectionError', 'ClientPayloadError'})  # The last two: aiohttp.
# An answer that did not parse (a body cut off, not JSON, the wrong shape
# for the client's own types): transient, like a dropped connection.
_BAD_BODY_NAMES = frozenset({
    'JSONDecodeError', 'DecodeError', 'ValidationError', 'ParseError'})


def generic_failure(exn: BaseException) -> Optional[Failure]:
  """Classifies exceptions that are not a client's own HTTP status errors.

  Returns None for anything that does not come from the service or the
  network: a bug (TypeError, AttributeError, ...) is raised, not turned
  into error rows.
  """
  if isinstance(exn, BadResponse):
    return Failure(BAD_RESPONSE, str(exn), retryable=exn.retryable)
  names = {c.__name__ for c in type(exn).__mro__}
  msg = f'{type(exn).__name__}: {exn}'
  if names & _TIMEOUT_NAMES:
    return Failure(TIMEOUT, msg, retryable=True)
  if names & _CONNECTION_NAMES:
    return Failure(CONNECTION_ERROR, msg, retryable=True)
  if names & _BAD_BODY_NAMES:
    return Failure(BAD_RESPONSE, msg, retryable=True)
  return None


@dataclasses.dataclass
class Outcome:
  """The end of one request's life: a value, or the failure that ended it."""
  value: Any = None
  failure: Optional[Failure] = None
  attempts: int = 0
  rate_limited: int = 0  # 429 responses among the attempts.
  waited_secs: float = 0.0  # Backoff, Retry-After, budget and throttling waits.
  latencies: List[float] = dataclasses.field(default_factory=list)
  from_cache: bool = False  # Read from cache_dir: nothing was sent.

  @property
  def retries(self) -> int:
    return max(0, self.attempts - 1)


# The steps of `RemoteCaller._attempts` other than sleeps (numbers).
_ACQUIRE = 'acquire'  # Take a slot of the adaptive limit.


@dataclasses.dataclass(frozen=True)
class _Send:
  """Send one attempt with this timeout."""
  timeout: float


class RemoteCaller:
  """Runs requests under a RemotePolicy; one per worker process and backend.

  `submit(send, classify)` starts a request on the caller's threads and
  returns a Future of its Outcome: requests flow continuously, whatever
  batch or bundle they came from, up to the adaptive concurrency limit.
  `call` does the same on the calling thread; `call_async` in a coroutine,
  and `submit_async` runs coroutines on the caller's event loop. A request's failure is an
  Outcome, never an exception; an exception that `classify` does not
  recognise (None: a bug, not the service) is raised from the Future.

  `usage(value)` may return the tokens an answer used (for
  tokens_per_minute).
  """
  # The SRE throttler's K and window (see remote_limits.Throttler).
  OVERLOAD_RATIO = 2.0
  THROTTLE_WINDOW_SECS = 60.0

  def __init__(self, policy: RemotePolicy, rng: Optional[random.Random] = None,
               usage: Optional[Callable[[Any], int]] = None):
    self.policy = policy
    self._random = rng or random.Random()
    self._gate = remote_limits.Gate()
    self._throttler = remote_limits.Throttler(
        self.THROTTLE_WINDOW_SECS, self.OVERLOAD_RATIO, self._random)
    self.limit = remote_limits.AdaptiveLimit(policy.max_concurrency)
    self._requests = remote_limits.optional_budget(policy.requests_per_minute)
    self._tokens = remote_limits.optional_budget(policy.tokens_per_minute)
    self._usage = usage
    # Threads only wait (on the limit, the network, backoff): as many as
    # the cap, created as needed. Queued work beyond that waits its turn.
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=policy.max_concurrency, thread_name_prefix='beam_llm_remote')
    self._loop = None  # The event loop of submit_async, started on first use.
    self._loop_lock = threading.Lock()

  def submit(self, send: Callable[[float], Any],
             classify: Callable[[BaseException], Optional[Failure]]
             ) -> concurrent.futures.Future:
    return self._pool.submit(self.call, send, classify)

  def submit_task(self, task: Callable[[], Any]) -> concurrent.futures.Future:
    """Runs any zero-argument task (which may `call`) on the threads."""
    return self._pool.submit(task)

  def call(
      self,
      send: Callable[[float], Any],
      classify: Callable[[BaseException], Optional[Failure]]) -> Outcome:
    """One request, with retries, backoff and throttling, within budget."""
    steps = self._attempts(classify)
    reply = None
    while True:
      try:
        step = steps.send(reply)
      except StopIteration as done:
        return done.value
      reply = None
      if step is _ACQUIRE:
        self.limit.acquire()
      elif isinstance(step, _Send):
        try:
          reply = (send(step.timeout), None)
        except Exception as exn:  # pylint: disable=broad-except
          reply = (None, exn)  # The policy decides what it means.
      else:
        time.sleep(step)

  async def call_async(
      self,
      send: Callable[[float], Awaitable[Any]],
      classify: Callable[[BaseException], Optional[Failure]]) -> Outcome:
    """`call` for a coroutine `send`: the same policy (`_attempts`), its
    waits awaited on the event loop instead of a thread each."""
    steps = self._attempts(classify)
    reply = None
    while True:
      try:
        step = steps.send(reply)
      except StopIteration as done:
        return done.value
      reply = None
      if step is _ACQUIRE:
        await self.limit.acquire_async()
      elif isinstance(step, _Send):
        try:
          reply = (await send(step.timeout), None)
        except Exception as exn:  # pylint: disable=broad-except
          reply = (None, exn)
      else:
        await asyncio.sleep(step)

  def submit_async(self, task: Callable[[], Awaitable[Any]]
                   ) -> concurrent.futures.Future:
    """Runs a coroutine (which may `call_async`) on this caller's event loop:
    one thread drives every request in flight, where `submit_task` needs a
    thread per request (the client process's CPU per request, bench/RESULTS.md)."""
    with self._loop_lock:
      if self._loop is None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True,
                         name='beam_llm_remote_loop').start()
    return asyncio.run_coroutine_threadsafe(task(), self._loop)

  def _attempts(self, classify: Callable[[BaseException], Optional[Failure]]
                ) -> Generator[Any, Any, Outcome]:
    """The policy for one request, whoever carries it out (`call`,
    `call_async`): yields the steps its driver takes — `_ACQUIRE` (a slot
    of the limit), `_Send(timeout)` (one attempt; the driver sends back
    (value, None) or (None, exception)) or a number (sleep that long) — and
    returns the Outcome."""
    p = self.policy
    out = Outcome()
    deadline = time.monotonic() + p.deadline_secs
    while True:
      stop = yield from self._wait_until_allowed(out, deadline)
      if stop is not None:
        # Keep the service's last word if there was one: it says more.
        out.failure = out.failure or stop
        break
      yield _ACQUIRE
      if self._held(time.monotonic())[0] > 0:
        # A Retry-After came in, or the budgets ran out, while this request
        # waited for a slot.
        self.limit.cancel()
        continue
      timeout = max(0.001, min(p.timeout_secs, deadline - time.monotonic()))
      started = time.monotonic()
      out.attempts += 1
      if self._requests:
        self._requests.take(1)
      value, exn = yield _Send(timeout)
      latency = time.monotonic() - started
      failure = None
      if exn is None:
        out.value = value
      else:
        failure = classify(exn)
        if failure is None:  # Not the service's doing: a bug. Raise it.
          self.limit.release(latency, remote_limits.FAULT)
          raise exn
      out.failure = failure
      out.latencies.append(latency)
      self.limit.release(
          latency, remote_limits.OK if failure is None else failure.signal)
      self._throttler.record(accepted=failure is None or not failure.overloaded)
      if failure is None:
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
      yield from self._sleep(out, wait)
    return self._finish(out)

  def _wait_until_allowed(self, out: Outcome, deadline: float):
    """Steps that wait out any Retry-After, budgets and local throttling.

    Returns why the row must stop instead, if waiting would pass its deadline.
    """
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
        yield from self._sleep(out, wait + self._random.uniform(0, 0.05))
        continue
      if self._throttler.should_delay(count=not counted):
        counted = True
        delay = self.policy.initial_backoff_secs * self._random.uniform(0.5, 1.5)
        if now + delay >= deadline:
          return Failure(
              DEADLINE, 'throttled on this worker (the service refused most '
              f'recent requests) until deadline_secs={self.policy.deadline_secs}'
              ' ran out')
        yield from self._sleep(out, delay)
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
  def _sleep(out: Outcome, secs: float):
    """A step: sleep `secs` (counted as waited)."""
    if secs > 0:
      yield secs
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
