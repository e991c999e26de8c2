"""What the remote EmbedText backends share, on beam_llm.remote's call
policy (retries, backoff, Retry-After, throttling, concurrency, deadline),
the same one GenerateText's remote backends use.

Embedding services take many texts per request, so a backend implements:

- `connect(redactor)`: build the client on the worker;
- `send(client, texts, timeout_secs)`: one request for a list of texts,
  returning one vector per text (raise `remote.BadResponse` for an answer
  that cannot be used);
- `classify(exn)`: what a client exception means (`remote.Failure`).

A request that the service rejects as a whole (a 4xx, or an answer it could
not use) is retried text by text, so one bad text fails only its own row.
"""
import dataclasses
import functools
import logging
from typing import Any, List, Optional

from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import remote
from beam_llm.embeddings.base import EmbeddingFailure
from beam_llm.embeddings.base import EmbeddingHandler
from beam_llm.redaction import Redactor
from beam_llm.row_failures import ServiceOutage

_OWNER = 'EmbedText'
_LOG = logging.getLogger('beam_llm.EmbedText')
_SPLIT = (remote.CLIENT_ERROR, remote.BAD_RESPONSE)
# The service, not the texts: once retries are spent, the bundle fails
# (beam_llm/row_failures.py) instead of the rows turning into error rows.
_OUTAGE = (remote.RATE_LIMITED, remote.TIMEOUT, remote.SERVER_ERROR,
           remote.CONNECTION_ERROR, remote.DEADLINE)

POLICY_ARGS_DOC = """
    texts_per_request: Most texts sent in one request. Defaults to 32.
    max_concurrency: Most requests in flight at once per worker process.
      Defaults to 4.
    max_retries: Most retries per request after its first attempt; only 429,
      408, 5xx, dropped connections and timeouts are retried. Defaults to 5.
    timeout_secs: Longest wait for one answer. Defaults to 60.
    deadline_secs: Most time one request may take, retries and waits
      included. Defaults to 600.
    initial_backoff_secs: Backoff before the first retry; it doubles with
      each retry (with jitter), and is at least the service's Retry-After.
      Defaults to 1.
    max_backoff_secs: Longest backoff between two attempts. Defaults to 60."""


def documented(cls):
  cls.__doc__ = cls.__doc__.rstrip() + POLICY_ARGS_DOC + '\n'
  return cls


class RemoteUnavailable(ServiceOutage):
  """The service cannot be used at all (at load time, or still failing once
  the retries are spent): fails the bundle."""


@dataclasses.dataclass
class _Remote:
  """The loaded "model" of a remote backend: one per worker process (a
  class, not a tuple: Beam's model sharing keeps a weak reference to it)."""
  client: Any
  caller: remote.RemoteCaller
  redactor: Redactor


class RemoteEmbedder(EmbeddingHandler):
  def __init__(self, batching, texts_per_request: int, policy: remote.RemotePolicy):
    for key, problem in policy.problems():
      _config.fail(_OWNER, f'model_handler.config.{key}', problem)
    if texts_per_request < 1:
      _config.fail(_OWNER, 'model_handler.config.texts_per_request',
                   'must be at least 1')
    batching = dict(batching)
    for key in ('large_model', 'model_copies'):
      if batching.pop(key, None):
        _config.fail(_OWNER, key, f'is for models on the worker; the '
                     f'{self.backend} backend shares one client per process')
    # Enough texts per batch to keep every concurrent request busy.
    batching.setdefault('max_batch_size', texts_per_request * policy.max_concurrency)
    super().__init__(batching)
    self.policy = policy
    self._per_request = texts_per_request
    self.stats = {'requests': 0, 'retries': 0, 'responses_429': 0}

  # -- to implement -------------------------------------------------------
  def connect(self, redactor: Redactor) -> Any:
    raise NotImplementedError

  def send(self, client, texts: List[str], timeout_secs: float) -> List[List[float]]:
    raise NotImplementedError

  def classify(self, exn: BaseException) -> remote.Failure:
    raise NotImplementedError

  # -- shared -------------------------------------------------------------
  def load_model(self):
    redactor = Redactor()
    try:
      client = self.connect(redactor)
    except Exception as exn:  # pylint: disable=broad-except
      raise RemoteUnavailable(redactor.redact(
          f'{_OWNER} [{self.describe()}]: cannot set up the client: '
          f'{type(exn).__name__}: {exn}')) from None
    return _Remote(client, remote.RemoteCaller(self.policy), redactor)

  def embed(self, loaded, texts: List[str]) -> list:
    groups = [list(range(i, min(i + self._per_request, len(texts))))
              for i in range(0, len(texts), self._per_request)]
    results: list = [None] * len(texts)
    while groups:
      outcomes = self._send_all(loaded, [[texts[i] for i in g] for g in groups])
      retry = []
      for group, out in zip(groups, outcomes):
        failure = out.failure
        if failure is None and len(out.value) != len(group):
          failure = remote.Failure(
              remote.BAD_RESPONSE,
              f'{len(out.value)} vectors for {len(group)} texts')
        if failure is None:
          for i, vector in zip(group, out.value):
            results[i] = [float(x) for x in vector]
        elif failure.error_type in _SPLIT and len(group) > 1:
          retry += [[i] for i in group]  # Find the text the service rejects.
        elif failure.error_type in _OUTAGE:
          raise RemoteUnavailable(loaded.redactor.redact(
              f'{_OWNER} [{self.describe()}]: the service kept failing '
              f'until the retries ran out: {failure.msg}'))
        else:
          for i in group:
            results[i] = EmbeddingFailure(
                loaded.redactor.redact(f'{self.backend}: {failure.msg}'),
                failure.error_type)
      groups = retry
    return results

  def _send_all(self, loaded, batches: List[List[str]]) -> list:
    client, caller = loaded.client, loaded.caller
    classify = self._classify
    futures = [caller.submit(functools.partial(self.send, client, batch), classify)
               for batch in batches]
    outcomes = [f.result() for f in futures]
    ns = self.get_metrics_namespace()
    for out in outcomes:
      for name, value in (('requests', out.attempts), ('retries', out.retries),
                          ('responses_429', out.rate_limited)):
        Metrics.counter(ns, name).inc(value)
        self.stats[name] += value
    return outcomes

  def _classify(self, exn: BaseException) -> remote.Failure:
    if isinstance(exn, remote.BadResponse):
      return remote.Failure(remote.BAD_RESPONSE, str(exn))
    return self.classify(exn)
