"""What the remote backends share: the call policy, the cache, redaction,
metrics. A backend implements only how to reach its service:

- `connect(redactor)`: build the client on the worker (read the API key from
  the environment here, and register it with the redactor);
- `build_request(prompt)`: the JSON-able request for one prompt (raise
  `PromptError` if the prompt cannot be sent);
- `send(client, request, timeout_secs)`: send it once, return a Generation;
- `classify(exn)`: what a client exception means (`remote.Failure`).

Everything else — concurrency, retries, Retry-After, throttling, the
deadline, caching, metrics and keeping secrets out of messages — happens
here and in beam_llm.remote, the same for every backend.
"""
import dataclasses
import functools
import logging
import time
from typing import Any, List, Mapping, Optional

from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import remote
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.base import TextGenerationHandler
from beam_llm.redaction import Redactor
from beam_llm.response_cache import ResponseCache
from beam_llm.response_cache import cache_key

_LOG = logging.getLogger('beam_llm.GenerateText')
_OWNER = 'GenerateText'
_FAILURE_LOG_EVERY_SECS = 30.0

# Appended to every remote backend's docstring (see `documented`), so the
# shared options are documented once and listed with each backend.
POLICY_ARGS_DOC = """
    max_concurrency: Most requests in flight at once per worker process.
      Defaults to 16.
    max_retries: Most retries per row after its first attempt; only 429,
      408, 5xx, dropped connections and timeouts are retried. Defaults to 5.
    timeout_secs: Longest wait for one answer before the attempt counts as a
      timeout. Defaults to 60.
    deadline_secs: Most time one row may take, from its first attempt,
      including retries, backoff and waits for Retry-After. Defaults to 600.
    initial_backoff_secs: Backoff before the first retry; it doubles with
      each retry (with jitter), and is at least the service's Retry-After.
      Defaults to 1.
    max_backoff_secs: Longest backoff between two attempts (a longer
      Retry-After is still honoured). Defaults to 60.
    cache: Send identical requests (same backend, target, model, prompt and
      parameters) once per worker and reuse the answer. Turn off when
      identical prompts should get independent samples. Defaults to true.
    cache_dir: Directory (local, gs://, s3://, ...) that keeps answers
      across runs: a re-run after a crash does not pay again for requests
      that already succeeded. Defaults to none (memory only)."""


def documented(cls):
  """Adds the shared policy options to a backend's `Args:` documentation."""
  cls.__doc__ = cls.__doc__.rstrip() + POLICY_ARGS_DOC + '\n'
  return cls


class PromptError(ValueError):
  """A prompt this backend cannot send (becomes a `bad_prompt` row)."""


class RemoteUnavailable(RuntimeError):
  """The service cannot be used at all (load time): fails the pipeline."""


@dataclasses.dataclass
class _Remote:
  """The loaded "model" of a remote backend: one per worker process."""
  client: Any
  caller: remote.RemoteCaller
  cache: Optional[ResponseCache]
  redactor: Redactor


class RemoteHandler(TextGenerationHandler):
  """Base of the remote GenerateText backends (one request per row)."""

  def __init__(
      self,
      generation: Mapping[str, Any],
      batching: Mapping[str, Any],
      policy: remote.RemotePolicy,
      cache: bool = True,
      cache_dir: Optional[str] = None):
    for key, problem in policy.problems():
      _config.fail(_OWNER, f'model_handler.config.{key}', problem)
    batching = dict(batching)
    for key in ('large_model', 'model_copies'):
      if batching.pop(key, None):
        _config.fail(
            _OWNER, key, f'is for models on the worker; the {self.backend} '
            'backend shares one client per worker process already')
    # Big batches: RunInference hands a batch over and waits for all of it,
    # so the end of each batch, when fewer than max_concurrency requests are
    # left in flight, is time lost. A batch of 4 x max_concurrency rows
    # loses at most ~1/4 of a request's latency to that, 16 x ~1/16.
    n = policy.max_concurrency
    most = batching.get('max_batch_size')
    batching.setdefault('min_batch_size', min(4 * n, most or 4 * n))
    batching.setdefault('max_batch_size', max(16 * n, batching['min_batch_size']))
    super().__init__(generation, batching)
    self.policy = policy
    self._cache = cache
    self._cache_dir = cache_dir
    self._throttled_carry = 0.0
    self._last_failure_log = 0.0
    # Totals for this handler object (tests and benchmarks read them).
    self.stats = {'requests': 0, 'retries': 0, 'responses_429': 0,
                  'cache_hits': 0, 'throttled_secs': 0.0}

  # -- to implement -------------------------------------------------------
  def connect(self, redactor: Redactor) -> Any:
    raise NotImplementedError

  def target(self) -> str:
    """Where requests go (base URL, endpoint): part of the cache key."""
    raise NotImplementedError

  def build_request(self, prompt) -> dict:
    raise NotImplementedError

  def send(self, client, request: dict, timeout_secs: float) -> Generation:
    raise NotImplementedError

  def classify(self, exn: BaseException) -> remote.Failure:
    raise NotImplementedError

  # -- shared -------------------------------------------------------------
  def load_model(self) -> _Remote:
    redactor = Redactor()
    try:
      client = self.connect(redactor)
    except RemoteUnavailable as exn:
      raise RemoteUnavailable(redactor.redact(str(exn))) from None
    except Exception as exn:  # pylint: disable=broad-except
      raise RemoteUnavailable(redactor.redact(
          f'{_OWNER} [{self.describe()}]: cannot set up the client: '
          f'{type(exn).__name__}: {exn}')) from None
    return _Remote(
        client, remote.RemoteCaller(self.policy),
        ResponseCache(self._cache_dir) if self._cache else None, redactor)

  def generate(self, loaded: _Remote, prompts: list) -> list:
    responses: List[Any] = [None] * len(prompts)
    owned = {}  # key -> (future or None, request, [row indexes])
    waiting = []  # (row index, future owned by another batch or thread)
    hits = 0
    for i, prompt in enumerate(prompts):
      try:
        request = self.build_request(prompt)
      except PromptError as exn:
        responses[i] = GenerationFailure(str(exn), 'bad_prompt')
        continue
      if loaded.cache is None:  # cache: false: every row is its own request.
        owned[i] = (None, request, [i])
        continue
      key = cache_key(self.backend, self.target(), request)
      if key in owned:
        owned[key][2].append(i)
        hits += 1
        continue
      value, future, owner = loaded.cache.claim(key)
      if value is not None:
        responses[i] = Generation(**value)
        hits += 1
      elif owner:
        owned[key] = (future, request, [i])
      else:
        waiting.append((i, future))
    classify = functools.partial(self._classify_redacted, loaded.redactor)
    tasks = [
        functools.partial(self._request_task, loaded, classify, key, request)
        for key, (_, request, _) in owned.items()
    ]
    outcomes = []
    try:
      outcomes = loaded.caller.run_all(tasks)
    finally:
      # Settle every future this batch owns, even on an unexpected error, so
      # identical requests waiting elsewhere are never stuck.
      for n, (key, (future, _, rows)) in enumerate(owned.items()):
        outcome = outcomes[n] if n < len(outcomes) else None
        response = _response(outcome)
        for i in rows:
          responses[i] = response
        if future is not None:
          ok = isinstance(response, Generation)
          loaded.cache.settle(
              key, future,
              dataclasses.asdict(response) if ok else response, ok)
    for i, future in waiting:
      value, ok = future.result()
      responses[i] = Generation(**value) if ok else value
      hits += ok
    self._record_calls(outcomes, hits, loaded.redactor)
    return responses

  def _request_task(self, loaded: _Remote, classify, key, request):
    """One request on a pool thread: cache_dir first, then the service."""
    if loaded.cache is not None:
      kept = loaded.cache.read(key)
      if kept is not None:
        return remote.Outcome(value=Generation(**kept), from_cache=True)
    send = functools.partial(self.send, loaded.client, request)
    outcome = loaded.caller.call(send, classify)
    if loaded.cache is not None and outcome.failure is None:
      loaded.cache.write(key, dataclasses.asdict(outcome.value))
    return outcome

  def _classify_redacted(self, redactor: Redactor, exn: BaseException):
    if isinstance(exn, remote.BadResponse):
      failure = remote.Failure(remote.BAD_RESPONSE, str(exn))
    else:
      failure = self.classify(exn)
    return dataclasses.replace(
        failure, msg=redactor.redact(f'{self.backend}: {failure.msg}'))

  def _record_calls(self, outcomes, hits: int, redactor: Redactor) -> None:
    """Beam metrics for this batch's requests, on the DoFn's thread."""
    ns = self.get_metrics_namespace()
    latency = Metrics.distribution(ns, 'request_latency_msecs')
    requests = retries = limited = 0
    waited = 0.0
    for out in outcomes:
      if out.from_cache:
        hits += 1
        continue
      requests += out.attempts
      retries += out.retries
      limited += out.rate_limited
      waited += out.waited_secs
      for secs in out.latencies:
        latency.update(int(secs * 1000))
      if isinstance(out.value, Generation) and out.failure is None:
        self.record_usage(out.value.input_tokens or 0, out.value.output_tokens or 0)
      if out.failure is not None:
        Metrics.counter(ns, f'failed_requests_{out.failure.error_type}').inc()
    for name, value in (('requests', requests), ('retries', retries),
                        ('responses_429', limited), ('cache_hits', hits)):
      Metrics.counter(ns, name).inc(value)
      self.stats[name] += value
    Metrics.counter(ns, 'throttled_msecs').inc(int(waited * 1000))
    self.stats['throttled_secs'] += waited
    # Dataflow's autoscaler reads this counter (whole seconds) to tell a
    # throttled step from a slow one.
    self._throttled_carry += waited
    whole = int(self._throttled_carry)
    if whole:
      Metrics.counter(ns, 'cumulativeThrottlingSeconds').inc(whole)
      self._throttled_carry -= whole
    failed = [o.failure for o in outcomes if o.failure is not None]
    now = time.monotonic()
    if failed and now - self._last_failure_log >= _FAILURE_LOG_EVERY_SECS:
      self._last_failure_log = now
      _LOG.warning(
          'GenerateText [%s]: %d of %d requests in a batch failed; e.g. (%s) %s',
          self.describe(), len(failed), len(outcomes), failed[0].error_type,
          redactor.redact(failed[0].msg))


def _response(outcome: Optional[remote.Outcome]):
  if outcome is None:
    return GenerationFailure('the request was never sent', 'generation')
  if outcome.failure is not None:
    return GenerationFailure(outcome.failure.msg, outcome.failure.error_type)
  return outcome.value
