"""What the remote backends share: the call policy, the cache, redaction,
metrics, and rows that flow without batch barriers. A backend implements
only how to reach its service:

- `connect(redactor)`: build the client on the worker (read the API key from
  the environment here, and register it with the redactor);
- `build_request(prompt)`: the JSON-able request for one prompt (raise
  `PromptError` if the prompt cannot be sent);
- `async send(client, request, timeout_secs)`: send it once, return a
  Generation. It runs on the process's remote event loop (beam_llm.remote):
  a client without an async API calls `remote.in_thread(blocking_call)`;
- `classify(exn)`: what a client exception means (`remote.Failure`), or
  None when it is not the service's doing (then it is raised: a bug).

Everything else — concurrency, retries, Retry-After, budgets, throttling,
the deadline, caching, metrics and keeping secrets out of messages —
happens here and in beam_llm.remote, the same for every backend. A row
whose request the service refuses is an error row; a service that stays
down past the retries fails the bundle (`RemoteCaller.is_outage`).

GenerateText runs a remote backend with `RemoteGenerateDoFn` rather than
RunInference: each row's request starts as soon as the row arrives and the
row leaves as soon as its answer is in, so the service sees a steady flow,
not batches that each wait for their slowest request.
"""
import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
import uuid
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from beam_llm import _config
from beam_llm import progress
from beam_llm import remote
from beam_llm.generation_params import GenerationParams
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.base import PromptError  # Raised by backends.
from beam_llm.handlers.base import RowPrompt
from beam_llm.handlers.base import TextGenerationHandler
from beam_llm.handlers.base import prompt_problem
from beam_llm.redaction import Redactor
from beam_llm.remote import clients
from beam_llm.remote.cache import ResponseCache
from beam_llm.remote.cache import cache_key
from beam_llm.remote.failures import RemoteUnavailable

_LOG = logging.getLogger('beam_llm.GenerateText')
_OWNER = 'GenerateText'
_FAILURE_LOG_EVERY_SECS = 30.0

# One loaded client (and caller, cache) per handler per worker process,
# shared by every DoFn instance and thread of the process, and how many
# DoFn instances hold it (the last to tear down lets it go).
_LOADED = {}
_HOLDERS = {}
_LOADED_LOCK = threading.Lock()


@dataclasses.dataclass
class _Remote:
  """The loaded "model" of a remote backend: one per worker process."""
  client: Any
  caller: remote.RemoteCaller
  cache: Optional[ResponseCache]
  redactor: Redactor


class RemoteHandler(TextGenerationHandler):
  """Base of the remote GenerateText backends (one request per row)."""
  # GenerateText runs this backend with `flow_dofn()`, not RunInference.
  flows_rows = True
  # Whether the loaded client is let go (`disconnect`) when the last DoFn of
  # the process using it tears down. Otherwise it lives as long as the
  # process, its cache and adaptive limits with it.
  release_at_teardown = False

  def __init__(
      self,
      generation: Mapping[str, Any],
      batching: Mapping[str, Any],
      policy: Mapping[str, Any]):
    batching = dict(batching)
    for key in ('large_model', 'model_copies', 'max_batch_tokens'):
      if batching.pop(key, None):
        _config.fail(
            _OWNER, key, f'is for models on the worker; the {self.backend} '
            'backend shares one client per worker process and sends each '
            'row as it comes')
    super().__init__(generation, batching)
    self.policy = remote.RemotePolicy.from_options(_OWNER, policy)
    self.params = GenerationParams.of(generation)
    # Off when sampling without a seed: identical prompts must get
    # independent samples, not one sample repeated.
    self._cache = (self.params.repeatable if self.policy.cache is None
                   else self.policy.cache)
    self._uid = uuid.uuid4().hex
    self._last_failure_log = 0.0
    self._throttled_carry = 0.0
    # Totals for this handler object (tests and benchmarks read them).
    self.stats = {'requests': 0, 'retries': 0, 'responses_429': 0,
                  'cache_hits': 0, 'throttled_secs': 0.0}

  @property
  def caches(self) -> bool:
    """Whether identical requests share one answer (`cache`; off when
    sampling without a seed)."""
    return self._cache

  def batch_transform(self):
    """The Beam transform GenerateText runs instead of one request per
    row, with `batch_api: true` on a backend that has a Batch API
    (`self.batch`, beam_llm/batch_api); else None."""
    batch = getattr(self, 'batch', None)
    if batch is None or not batch.batch_api:
      return None
    from beam_llm.batch_api.transform import BatchGenerate
    return BatchGenerate(self)

  # -- to implement -------------------------------------------------------
  def connect(self, redactor: Redactor) -> Any:
    raise NotImplementedError

  def target(self) -> str:
    """Where requests go (base URL, endpoint): part of the cache key."""
    raise NotImplementedError

  def build_request(self, prompt) -> dict:
    raise NotImplementedError

  async def send(self, client, request: dict, timeout_secs: float) -> Generation:
    raise NotImplementedError

  def classify(self, exn: BaseException) -> Optional[remote.Failure]:
    return remote.generic_failure(exn)

  def disconnect(self, client) -> None:
    """Frees what `connect` holds beyond the process's life (a server it
    started); called when the last DoFn using it tears down, in a backend
    with `release_at_teardown`."""

  # -- shared -------------------------------------------------------------
  def load_model(self) -> _Remote:
    redactor = Redactor()
    client = clients.connect(self.message_prefix(), self.connect,
                             redactor)
    caller = remote.RemoteCaller(self.policy, usage=_tokens_used)
    return _Remote(client, caller,
                   ResponseCache(self.policy.cache_dir) if self._cache else None,
                   redactor)

  def shared_load(self) -> _Remote:
    """This handler's loaded client in this process (loaded once); each
    call holds it until a `shared_release`."""
    with _LOADED_LOCK:
      if self._uid not in _LOADED:
        _LOADED[self._uid] = self.load_model()
      _HOLDERS[self._uid] = _HOLDERS.get(self._uid, 0) + 1
      return _LOADED[self._uid]

  def shared_release(self) -> None:
    """Lets go of a `shared_load`; the last holder disconnects."""
    with _LOADED_LOCK:
      _HOLDERS[self._uid] = _HOLDERS.get(self._uid, 1) - 1
      if (_HOLDERS[self._uid] > 0 or self._uid not in _LOADED
          or not self.release_at_teardown):
        return
      loaded = _LOADED.pop(self._uid)
    self.disconnect(loaded.client)

  def flow_dofn(self) -> beam.DoFn:
    return RemoteGenerateDoFn(self)

  def start(self, loaded: _Remote, prompt) -> 'concurrent.futures.Future':
    """Starts one row: a Future of (response, Outcome or None if nothing
    was sent). Raises `RemoteUnavailable` when the service is down."""
    problem = prompt_problem(
        prompt.prompt if isinstance(prompt, RowPrompt) else prompt)
    try:
      if problem:
        raise PromptError(problem)
      request = self.build_request(prompt)
    except PromptError as exn:
      done = concurrent.futures.Future()
      done.set_result((GenerationFailure(str(exn), 'bad_prompt'), None))
      return done
    return remote.run_on_loop(self._request(loaded, request))

  async def _request(self, loaded: _Remote, request: dict):
    """One row's request, on the remote loop: from the cache, or sent."""
    async def make():
      outcome = await loaded.caller.call(
          lambda timeout: self.send(loaded.client, request, timeout),
          lambda exn: self._classify_redacted(loaded.redactor, exn))
      if loaded.caller.is_outage(outcome):
        raise RemoteUnavailable(
            self.message_prefix() + f': the service kept failing until '
            f'the retries ran out: {outcome.failure.msg}')
      response = _response(outcome)
      return response, isinstance(response, Generation), outcome

    if loaded.cache is None:
      response, _, outcome = await make()
      return response, outcome
    response, _, outcome = await loaded.cache.get(
        cache_key(self.backend, self.target(), request), make,
        encode=dataclasses.asdict, decode=_generation_from)
    if response is None:  # The identical request it waited for raised:
      # an outage (or a bug), which fails this row's bundle too.
      raise RemoteUnavailable(
          self.message_prefix() + ': an identical request in flight '
          'failed (the error of the row that sent it says why)')
    return response, outcome

  def generate(self, loaded: _Remote, prompts: list) -> list:
    """All of a batch at once (the run_inference path; GenerateText flows)."""
    results = [f.result() for f in [self.start(loaded, p) for p in prompts]]
    self.record_results(loaded, results)
    return [r[0] for r in results]

  def _classify_redacted(self, redactor: Redactor, exn: BaseException):
    failure = self.classify(exn)
    if failure is None:
      return None
    return dataclasses.replace(
        failure, msg=redactor.redact(f'{self.backend}: {failure.msg}'))

  def record_results(self, loaded: _Remote, results: list) -> None:
    """Beam metrics for finished rows, on the DoFn's thread."""
    ns = self.get_metrics_namespace()
    latency = Metrics.distribution(ns, 'request_latency_msecs')
    requests = retries = limited = hits = 0
    waited = 0.0
    failed = []
    for response, out in results:
      if out is None:  # Answered by the cache (memory, cache_dir, in flight).
        hits += isinstance(response, Generation)
        continue
      if isinstance(response, Generation):  # Tokens paid for: sent requests.
        self.record_usage(response.input_tokens or 0, response.output_tokens or 0)
      requests += out.attempts
      retries += out.retries
      limited += out.rate_limited
      waited += out.waited_secs
      for secs in out.latencies:
        latency.update(int(secs * 1000))
      if out.failure is not None:
        failed.append(out.failure)
        Metrics.counter(ns, f'failed_requests_{out.failure.error_type}').inc()
    for name, value in (('requests', requests), ('retries', retries),
                        ('responses_429', limited), ('cache_hits', hits)):
      Metrics.counter(ns, name).inc(value)
      self.stats[name] += value
    self.stats['max_in_flight'] = loaded.caller.limit.max_in_flight
    Metrics.counter(ns, 'throttled_msecs').inc(int(waited * 1000))
    self.stats['throttled_secs'] += waited
    # Dataflow's autoscaler reads this counter (whole seconds) to tell a
    # throttled step from a slow one.
    self._throttled_carry += waited
    whole = int(self._throttled_carry)
    if whole:
      Metrics.counter(ns, 'cumulativeThrottlingSeconds').inc(whole)
      self._throttled_carry -= whole
    now = time.monotonic()
    if failed and now - self._last_failure_log >= _FAILURE_LOG_EVERY_SECS:
      self._last_failure_log = now
      _LOG.warning(
          'GenerateText [%s]: %d of %d requests failed; e.g. (%s) %s',
          self.describe(), len(failed), len(results), failed[0].error_type,
          loaded.redactor.redact(failed[0].msg))


class RemoteGenerateDoFn(beam.DoFn):
  """(row, prompt) -> (row, PredictionResult), as RunInference would, but
  each row is sent when it arrives and emitted when its answer is in.

  At most `2 x max_concurrency` rows wait in a DoFn instance; past that,
  `process` waits for one to finish (backpressure). A bundle ends when its
  last row is answered.
  """
  def __init__(self, handler: RemoteHandler):
    self._handler = handler

  def setup(self):
    self._loaded = self._handler.shared_load()
    self._most_pending = max(64, 2 * self._handler.policy.max_concurrency)

  def teardown(self):
    if getattr(self, '_loaded', None) is not None:  # setup() succeeded.
      self._loaded = None
      self._handler.shared_release()

  def start_bundle(self):
    self._pending = {}
    self._done = queue.SimpleQueue()
    self._next = 0

  def process(self, keyed, wv=beam.DoFn.WindowedValueParam):
    n = self._next
    self._next += 1
    progress.started(self._handler.describe(), 1)
    future = self._handler.start(self._loaded, keyed[1])
    self._pending[n] = (wv, keyed, future)
    future.add_done_callback(lambda _, n=n: self._done.put(n))
    yield from self._drain(block=len(self._pending) >= self._most_pending)

  def finish_bundle(self):
    while self._pending:
      yield from self._drain(block=True)

  def _drain(self, block: bool):
    ready = [self._done.get()] if block else []
    while True:
      try:
        ready.append(self._done.get_nowait())
      except queue.Empty:
        break
    if not ready:
      return
    finished = [self._pending.pop(n) for n in ready]
    results = [future.result() for _, _, future in finished]  # Bugs raise here.
    self._handler.record_results(self._loaded, results)
    self._handler.record_rows([r[0] for r in results])
    for (wv, (row, prompt), _), (response, _) in zip(finished, results):
      yield wv.with_value((row, PredictionResult(prompt, response)))


def _tokens_used(value) -> int:
  if isinstance(value, Generation):
    return (value.input_tokens or 0) + (value.output_tokens or 0)
  return 0


def _generation_from(kept) -> Optional[Generation]:
  """A cache_dir entry as a Generation; None (a miss) if it is not one."""
  if not isinstance(kept, dict) or not isinstance(kept.get('text'), str):
    return None
  counts = [kept.get('input_tokens'), kept.get('output_tokens')]
  if not all(c is None or (isinstance(c, int) and not isinstance(c, bool))
             for c in counts):
    return None
  confidence = kept.get('confidence')
  if not (confidence is None or isinstance(confidence, float)):
    return None
  return Generation(kept['text'], *counts, confidence)


def _response(outcome: remote.Outcome):
  if outcome.failure is not None:
    return GenerationFailure(outcome.failure.msg, outcome.failure.error_type)
  return outcome.value
