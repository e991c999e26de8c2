"""OpenAI-compatible /v1/embeddings (OpenAI, vLLM, Ollama, llama.cpp, TEI)
on the official `openai` client, imported on the worker only."""
from typing import List, Optional

from beam_llm import remote
from beam_llm.remote import clients
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
    key = clients.api_key(
        self._api_key_env, self.message_prefix(), redactor,
        'leave api_key_env out for a server that needs no key')
    return clients.openai_client(self._base_url, key, self.policy.timeout_secs,
                                 self.policy.max_concurrency)

  async def send(self, client, texts: List[str], timeout_secs: float
                 ) -> Embeddings:
    import httpx
    body = {'model': self._model, 'input': texts, 'encoding_format': 'float'}
    if self._dimensions:
      body['dimensions'] = self._dimensions
    response = await client.post(
        '/embeddings', cast_to=httpx.Response, body=body,
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
    return remote.openai_failure(exn, self.policy.timeout_secs)
