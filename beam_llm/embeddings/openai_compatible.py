"""OpenAI-compatible /v1/embeddings (OpenAI, vLLM, Ollama, llama.cpp, TEI)
on the official `openai` client, imported on the worker only."""
import os
from typing import List, Optional

from beam_llm import remote
from beam_llm.embeddings.remote import Embeddings
from beam_llm.embeddings.remote import RemoteEmbedder

_OWNER = 'EmbedText'


@remote.with_policy
class OpenAIEmbedder(RemoteEmbedder):
  """`model_handler: {type: OpenAICompatible, config: {...}}`.

  POST /embeddings with many texts per request, through the official
  `openai` client with its own retries off: beam-llm's remote-call policy
  (docs/remote.md) owns retries.

  Args:
    model: The embedding model the server knows (e.g.
      `text-embedding-3-small` on OpenAI, `nomic-embed-text` on Ollama).
    base_url: The API root, ending in `/v1`.
    api_key_env: Name of the environment variable holding the API key, read
      on the worker. The key never goes in the YAML. Defaults to none.
    dimensions: Ask for vectors of this size (models that support it).
    texts_per_request: Most texts sent in one request. Defaults to 32.
  """
  backend = 'OpenAICompatible'

  def __init__(
      self,
      *,
      model: str,
      base_url: str,
      api_key_env: Optional[str] = None,
      dimensions: Optional[int] = None,
      texts_per_request: int = 32,
      batching: Optional[dict] = None,
      **policy):
    super().__init__(batching or {}, texts_per_request, policy)
    self._model = model
    self._base_url = base_url.rstrip('/')
    self._api_key_env = api_key_env
    self._dimensions = dimensions

  def describe(self) -> str:
    return f'OpenAICompatible {self._model} at {self._base_url}'

  def identity(self) -> tuple:
    return (self.backend, self._base_url, self._model, self._dimensions)

  def connect(self, redactor):
    import openai
    key = 'EMPTY'  # The client insists on a key; local servers ignore it.
    if self._api_key_env:
      key = os.environ.get(self._api_key_env, '')
      if not key:
        raise RuntimeError(
            f'the environment variable {self._api_key_env!r} (api_key_env) '
            'is not set on the worker')
      redactor.add(key)
    return openai.OpenAI(base_url=self._base_url, api_key=key, max_retries=0,
                         timeout=self.policy.timeout_secs)

  def send(self, client, texts: List[str], timeout_secs: float) -> list:
    import httpx
    body = {'model': self._model, 'input': texts, 'encoding_format': 'float'}
    if self._dimensions:
      body['dimensions'] = self._dimensions
    response = client.post('/embeddings', cast_to=httpx.Response, body=body,
                           options={'timeout': timeout_secs})
    answer = response.json()  # ValueError if malformed: a bad_response.
    data = answer.get('data') if isinstance(answer, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(d, dict) and isinstance(d.get('embedding'), list) for d in data):
      raise remote.BadResponse('the answer has no embeddings')
    usage = answer.get('usage') if isinstance(answer.get('usage'), dict) else {}
    return Embeddings(
        [d['embedding'] for d in sorted(data, key=lambda d: d.get('index', 0))],
        usage.get('prompt_tokens'))

  def classify(self, exn: BaseException) -> remote.Failure:
    import openai
    if isinstance(exn, openai.APITimeoutError):
      return remote.Failure(
          remote.TIMEOUT, f'no answer within {self.policy.timeout_secs}s',
          retryable=True)
    if isinstance(exn, openai.APIConnectionError):
      return remote.Failure(remote.CONNECTION_ERROR, str(exn), retryable=True)
    if isinstance(exn, openai.APIStatusError):
      return remote.classify_status(
          exn.status_code, str(exn),
          remote.retry_after_from_headers(exn.response.headers))
    return remote.generic_failure(exn)
