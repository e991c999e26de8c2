"""What the remote EmbedText backends share, on beam_llm.remote's call
policy (retries, backoff, Retry-After, throttling, concurrency, deadline),
the same one GenerateText's remote backends use.

Embedding services take many texts per request, so a backend implements:

- `connect(redactor)`: build the client on the worker;
- `async send(client, texts, timeout_secs)`: one request for a list of
  texts, on the process's remote event loop (a blocking client calls
  `remote.in_thread`), returning `Embeddings` (one vector per text, and the
  tokens the service counted; raise `remote.BadResponse` for an answer that
  cannot be used);
- `identity()`: what makes a text's vector (for the response cache);
- `classify(exn)`: what a client exception means (`remote.Failure`).

The remote-call options (`@remote.with_policy`: retries, budgets, adaptive
concurrency, cache) are GenerateText's, with the same defaults. A request
that the service rejects as a whole (a 4xx, or an answer it could not use)
is retried text by text, so one bad text fails only its own row; a service
that stays down past the retries fails the bundle (the same rule as
generation's: `RemoteCaller.is_outage`). Vectors are cached per
text (in memory, and in `cache_dir` across runs) unless `cache: false`.
"""
import asyncio
import dataclasses
from typing import Any, List, Mapping, Optional

from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import remote
from beam_llm.embeddings.base import EmbeddingFailure
from beam_llm.embeddings.base import EmbeddingHandler
from beam_llm.redaction import Redactor
from beam_llm.remote import limits
from beam_llm.remote import clients
from beam_llm.remote.cache import ResponseCache
from beam_llm.remote.cache import cache_key
from beam_llm.remote.failures import RemoteUnavailable

_OWNER = 'EmbedText'
# A request the service rejects as a whole: find the text it rejects.
_SPLIT = (remote.CLIENT_ERROR, remote.BAD_RESPONSE)


@dataclasses.dataclass(frozen=True)
class Embeddings:
  """What `send` returns: one vector per text, and the tokens the service
  counted for the request if it says (for `tokens_per_minute`)."""
  vectors: List[List[float]]
  tokens: Optional[int] = None


@dataclasses.dataclass
class _Remote:
  """The loaded "model" of a remote backend: one per worker process (a
  class, not a tuple: Beam's model sharing keeps a weak reference to it)."""
  client: Any
  caller: remote.RemoteCaller
  redactor: Redactor
  cache: Optional[ResponseCache]  # None with `cache: false`.


class RemoteEmbedder(EmbeddingHandler):
  def __init__(self, batching, texts_per_request: int, policy: Mapping[str, Any]):
    # The remote-call options and their defaults are GenerateText's
    # (`@remote.with_policy` on each backend): declared once.
    self.policy = remote.RemotePolicy.from_options(_OWNER, policy)
    if texts_per_request < 1:
      _config.fail(_OWNER, 'model_handler.config.texts_per_request',
                   'must be at least 1')
    batching = dict(batching)
    for key in ('large_model', 'model_copies'):
      if batching.pop(key, None):
        _config.fail(_OWNER, key, f'is for models on the worker; the '
                     f'{self.backend} backend shares one client per process')
    # Enough texts per batch to keep the requests the limit starts with busy.
    batching.setdefault('max_batch_size', texts_per_request * min(
        self.policy.max_concurrency, limits.INITIAL_LIMIT))
    super().__init__(batching)
    self._per_request = texts_per_request
    # Embeddings are deterministic: cached unless `cache: false`.
    self._cache_on = self.policy.cache is not False
    self.stats = {'requests': 0, 'retries': 0, 'responses_429': 0}

  # -- to implement -------------------------------------------------------
  def connect(self, redactor: Redactor) -> Any:
    raise NotImplementedError

  async def send(self, client, texts: List[str], timeout_secs: float
                 ) -> Embeddings:
    raise NotImplementedError

  def identity(self) -> tuple:
    """What makes the same text give the same vector (service, model,
    options): part of each response cache key."""
    return (self.backend, self.describe())

  def classify(self, exn: BaseException) -> remote.Failure:
    raise NotImplementedError

  # -- shared -------------------------------------------------------------
  def load_model(self):
    redactor = Redactor()
    client = clients.connect(self.message_prefix(), self.connect,
                             redactor)
    return _Remote(
        client,
        remote.RemoteCaller(self.policy, usage=lambda answer: answer.tokens),
        redactor,
        ResponseCache(self.policy.cache_dir) if self._cache_on else None)

  def embed(self, loaded, texts: List[str]) -> list:
    """One vector (or EmbeddingFailure) per text; the requests run on the
    process's remote loop, metrics are recorded here on the DoFn thread."""
    results, outcomes = remote.run_blocking(self._embed(loaded, texts))
    ns = self.get_metrics_namespace()
    for out in outcomes:
      for name, value in (('requests', out.attempts), ('retries', out.retries),
                          ('responses_429', out.rate_limited)):
        Metrics.counter(ns, name).inc(value)
        self.stats[name] += value
    return results

  async def _embed(self, loaded, texts: List[str]):
    results: list = [None] * len(texts)
    outcomes: list = []
    cache = loaded.cache
    if cache is None:
      await self._embed_uncached(loaded, texts, range(len(texts)), results,
                                 outcomes)
      return results, outcomes
    # Each distinct text is claimed once: hits come from memory or
    # cache_dir, the rest is sent together, and repeats wait for their first.
    keys = [cache_key('embedding', *self.identity(), t) for t in texts]
    owned, waiting = [], []
    for i, key in enumerate(keys):
      value, future, owner = cache.claim(key)
      if future is None:
        results[i] = value
      elif owner:
        owned.append(i)
      else:
        waiting.append((i, future))
    kept = await asyncio.gather(*[cache.read(keys[i]) for i in owned])
    todo = []
    for i, vector in zip(owned, kept):
      vector = _vector_from(vector)
      if vector is None:
        todo.append(i)
      else:
        results[i] = vector
    try:
      await self._embed_uncached(loaded, texts, todo, results, outcomes)
      await asyncio.gather(*[cache.write(keys[i], results[i]) for i in todo
                             if isinstance(results[i], list)])
    finally:  # Settled even on an outage, so that no repeat waits forever.
      for i in owned:
        cache.settle(keys[i], results[i], isinstance(results[i], list))
    for i, future in waiting:
      value, ok = await future
      if not ok and not isinstance(value, EmbeddingFailure):
        # The batch that sent it raised (an outage, or a bug): so does this.
        raise RemoteUnavailable(
            self.message_prefix() + ': an identical text in flight '
            'failed (the error of the batch that sent it says why)')
      results[i] = value
    return results, outcomes

  async def _embed_uncached(self, loaded, texts, todo, results: list,
                            outcomes: list) -> None:
    """Fills results[i] for i in todo, `texts_per_request` per request."""
    todo = list(todo)
    groups = [todo[i:i + self._per_request]
              for i in range(0, len(todo), self._per_request)]
    while groups:
      sent = await asyncio.gather(*[
          loaded.caller.call(
              lambda timeout, batch=[texts[i] for i in g]: self.send(
                  loaded.client, batch, timeout),
              self._classify) for g in groups])
      outcomes += sent
      retry = []
      for group, out in zip(groups, sent):
        failure = out.failure
        vectors = out.value.vectors if failure is None else None
        if failure is None and len(vectors) != len(group):
          failure = remote.Failure(
              remote.BAD_RESPONSE,
              f'{len(vectors)} vectors for {len(group)} texts')
        if failure is None:
          for i, vector in zip(group, vectors):
            results[i] = [float(x) for x in vector]
        elif failure.error_type in _SPLIT and len(group) > 1:
          retry += [[i] for i in group]  # Find the text the service rejects.
        elif loaded.caller.is_outage(out):
          raise RemoteUnavailable(loaded.redactor.redact(
              self.message_prefix() + ': the service kept failing '
              f'until the retries ran out: {failure.msg}'))
        else:
          for i in group:
            results[i] = EmbeddingFailure(
                loaded.redactor.redact(f'{self.backend}: {failure.msg}'),
                failure.error_type)
      groups = retry

  def _classify(self, exn: BaseException) -> remote.Failure:
    if isinstance(exn, remote.BadResponse):
      return remote.Failure(remote.BAD_RESPONSE, str(exn))
    return self.classify(exn)


def _vector_from(kept) -> Optional[list]:
  """A cache_dir entry as a vector; None (a miss) if it is not one."""
  if isinstance(kept, list) and kept and all(
      isinstance(x, (int, float)) and not isinstance(x, bool) for x in kept):
    return kept
  return None
