"""Gemini on `google-genai`: one generateContent request per row, always
(with `batch_api`, one line per row in a Batch Mode file: batch_api/).

Beam's own Gemini handler sends a whole batch as one request and pairs the
N rows with the one answer, so rows are dropped or get another row's answer.
Here every row is its own request and gets its own answer (or its own
error). The client is imported on the worker only.
"""
import re
from typing import Optional

from beam_llm import _config
from beam_llm import batch_api
from beam_llm import remote
from beam_llm.batch_api.gemini_batches import GeminiBatchClient
from beam_llm.batch_api.vertex_batches import VertexBatchClient
from beam_llm.remote import clients
from beam_llm.handlers import remote_base
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import as_messages

_OWNER = 'GenerateText'
_ROLES = {'user': 'user', 'assistant': 'model', 'model': 'model'}


@remote.with_policy
@batch_api.with_options(GeminiBatchClient)
class GeminiHandler(remote_base.RemoteHandler):
  """`model_handler: {type: Gemini, config: {...}}`.

  Gemini through `google-genai`, on the Gemini Developer API (an API key)
  or on Vertex AI (`vertexai: true`, Application Default Credentials). One
  generateContent request per row, so each row gets its own answer. The
  client's own retries stay off: the remote-call policy below owns them, and
  reads the wait a 429 asks for from Retry-After or the error's RetryInfo.
  GenerateText's parameters map to the request's config: `max_new_tokens` is
  `max_output_tokens`; greedy decoding (the default) is `temperature: 0`;
  sampling sends `temperature` (1 when unset), `top_p`, `top_k`; `response_schema` is sent as the JSON response
  schema (`response_json_schema`, with `response_mime_type:
  application/json`); `generation_config` entries are further
  GenerateContentConfig fields (e.g. `seed`, `stop_sequences`,
  `thinking_config`). Chat prompts: `system` messages become the system
  instruction, `assistant` turns the model's. Token usage comes from the
  answer's usage metadata. `batch_api: true` sends the rows as batches (a
  JSONL file per batch, 50 % of the price): the Gemini Developer API's Batch
  Mode, or with `vertexai` Vertex AI batch prediction jobs on files in
  Cloud Storage under `batch_staging_uri` (docs/remote.md, "Batch mode";
  with `vertexai`, `batch_max_bytes` defaults to 1 GB).

  Args:
    model: The model, e.g. `gemini-2.5-flash`.
    api_key_env: Name of the environment variable that holds the Gemini API
      key, read on the worker when the model loads (the key itself never
      goes in the YAML). Not used with `vertexai`. Defaults to
      GEMINI_API_KEY.
    vertexai: Use Gemini on Vertex AI (Application Default Credentials,
      `project`, `location`) instead of the Gemini Developer API. Defaults
      to false.
    project: Project for `vertexai`. Defaults to the environment's.
    location: Region for `vertexai`. Defaults to us-central1.
    base_url: Root URL of the service, to go through a proxy or to a local
      test server (e.g. `http://127.0.0.1:8000`; with `vertexai`, an
      `http://` URL is called without Google credentials). Defaults to
      Google's.
    api_version: API version in request paths, e.g. `v1beta` or `v1`.
      Defaults to the client's.
    batch_staging_uri: With `vertexai` and `batch_api`, and required
      there: a Cloud Storage folder (`gs://bucket/prefix`) where each batch's
      request file is written and Vertex AI writes its results (workers
      need to create and read objects there; Vertex AI's service agent to
      read and write them). Against an `http://` `base_url`, Cloud Storage
      is that server too. Defaults to none.
  """
  backend = 'Gemini'
  supports_response_schema = True

  def __init__(
      self,
      *,
      model: str,
      api_key_env: str = 'GEMINI_API_KEY',
      vertexai: bool = False,
      project: Optional[str] = None,
      location: str = 'us-central1',
      base_url: Optional[str] = None,
      api_version: Optional[str] = None,
      batch_staging_uri: Optional[str] = None,
      generation: Optional[dict] = None,
      batching: Optional[dict] = None,
      **policy):
    # Vertex AI's batches are prediction jobs on Cloud Storage files.
    self.batch_provider = VertexBatchClient if vertexai else GeminiBatchClient
    self.batch = batch_api.BatchOptions.take(policy, self.batch_provider)
    super().__init__(generation or {}, batching or {}, policy)
    _check_staging(batch_staging_uri, vertexai and self.batch.batch_api)
    self.batch_staging_uri = batch_staging_uri
    self._model = model
    self._api_key_env = api_key_env
    self._vertexai = vertexai
    self._project = project
    self._location = location
    self._base_url = base_url
    self._api_version = api_version

  def describe(self) -> str:
    return f'Gemini {self._model}'

  def describe_model(self) -> dict:
    from beam_llm import lineage
    endpoint = lineage.safe_endpoint(self._base_url) or (
        f'vertexai:{self._project or "default"}/{self._location}'
        if self._vertexai else 'gemini-api')
    return {**super().describe_model(), 'model': self._model,
            'endpoint': endpoint}

  def target(self) -> str:
    where = (f'vertexai|{self._project}|{self._location}'
             if self._vertexai else 'gemini-api')
    return f'{where}|{self._base_url}|{self._api_version}'

  def connect(self, redactor):
    import httpx
    from google import genai
    from google.genai import types
    n = self.policy.max_concurrency
    limits = httpx.Limits(max_connections=max(n, 100),
                          max_keepalive_connections=n)
    http_options = types.HttpOptions(
        base_url=self._base_url, api_version=self._api_version,
        timeout=int(self.policy.timeout_secs * 1000),
        # retry_options unset: the client does not retry (remote.py does).
        # The sync client serves the Batch API's few calls; rows go through
        # `client.aio` on an httpx client of ours, made on the process's
        # remote loop (left to itself it picks aiohttp or httpx by what is
        # installed, each with its own pool and errors).
        client_args={'limits': limits},
        httpx_async_client=clients.async_httpx_client(limits))
    if self._vertexai:
      credentials = None
      if self._base_url and self._base_url.startswith('http://'):
        # A local emulator or test server: no Google credentials needed
        # (a static token the client never refreshes).
        from google.oauth2.credentials import Credentials
        credentials = Credentials(token='local-test-server')
      client = genai.Client(vertexai=True, project=self._project,
                            location=self._location, credentials=credentials,
                            http_options=http_options)
    else:
      key = clients.api_key(self._api_key_env, self.message_prefix(),
                            redactor, 'use vertexai: true')
      client = genai.Client(api_key=key, http_options=http_options)
    # Fail at load, not on every row, if generation_config has a typo.
    self._config(types, self._base_config(), self.policy.timeout_secs)
    return client

  def connect_storage(self):
    """A Cloud Storage client for Vertex AI batch files: Application
    Default Credentials; against an `http://` base_url (a local test
    server), that server, without credentials, as `connect` does."""
    from google.cloud import storage
    if self._base_url and self._base_url.startswith('http://'):
      from google.auth.credentials import AnonymousCredentials
      return storage.Client(
          project=self._project or 'local-test-server',
          credentials=AnonymousCredentials(),
          client_options={'api_endpoint': self._base_url})
    return storage.Client(project=self._project)

  def _base_config(self) -> dict:
    g = self._generation
    config = {}
    if g.get('max_new_tokens'):
      config['max_output_tokens'] = g['max_new_tokens']
    config.update(self.params.sampling_options())
    if g.get('response_schema'):
      config['response_mime_type'] = 'application/json'
      config['response_json_schema'] = g['response_schema']
    config.update(g.get('generation_config') or {})
    return config

  @staticmethod
  def _config(types, config: dict, timeout_secs: float):
    return types.GenerateContentConfig(
        **config,
        http_options=types.HttpOptions(timeout=max(1, int(timeout_secs * 1000))))

  def build_request(self, prompt) -> dict:
    config = self._base_config()
    if isinstance(prompt, str):
      contents = [{'role': 'user', 'parts': [{'text': prompt}]}]
    else:
      contents, system = [], []
      for m in as_messages(prompt):
        if m['role'] == 'system':
          system.append(m['content'])
        elif m['role'] in _ROLES:
          contents.append({'role': _ROLES[m['role']],
                           'parts': [{'text': m['content']}]})
        else:
          raise remote_base.PromptError(
              f'Gemini takes system, user and assistant messages, not '
              f'{m["role"]!r}')
      if system:
        config['system_instruction'] = '\n\n'.join(system)
      if not contents:
        raise remote_base.PromptError('the chat has only system messages')
    return {'model': self._model, 'contents': contents, 'config': config}

  async def send(self, client, request: dict, timeout_secs: float) -> Generation:
    from google.genai import types
    answer = await client.aio.models.generate_content(
        model=request['model'], contents=request['contents'],
        config=self._config(types, request['config'], timeout_secs))
    return self.read_answer(answer)

  def batch_line(self, request: dict) -> tuple:
    """(`models/M`, the REST request the synchronous call sends) of a built
    request, as a Batch API file line (beam_llm/batch_api)."""
    from beam_llm.batch_api import gemini_batches
    return gemini_batches.rest_request(request, self._vertexai)

  def read_rest_answer(self, body: dict) -> Generation:
    """The Generation in a GenerateContentResponse's REST form (a Batch API
    result line), read as a synchronous answer is."""
    from google.genai import models
    from google.genai import types
    if not isinstance(body, dict):
      raise remote.BadResponse('the answer is not an object')
    convert = (models._GenerateContentResponse_from_vertex if self._vertexai  # pylint: disable=protected-access
               else models._GenerateContentResponse_from_mldev)  # pylint: disable=protected-access
    return self.read_answer(types.GenerateContentResponse._from_response(  # pylint: disable=protected-access
        response=convert(body), kwargs={}))

  def read_answer(self, answer) -> Generation:
    """The Generation in a `GenerateContentResponse`; BadResponse if there
    is none."""
    candidates = answer.candidates or []
    if not candidates:
      feedback = getattr(answer, 'prompt_feedback', None)
      raise remote.BadResponse(
          f'no answer (prompt feedback: {feedback})' if feedback else
          'the answer has no candidates')
    parts = getattr(candidates[0].content, 'parts', None) or []
    texts = [p.text for p in parts if getattr(p, 'text', None) is not None
             and not getattr(p, 'thought', False)]
    if not texts:
      raise remote.BadResponse(
          f'the answer has no text (finish_reason: '
          f'{candidates[0].finish_reason})')
    usage = answer.usage_metadata
    return Generation(
        ''.join(texts).strip(),
        getattr(usage, 'prompt_token_count', None),
        getattr(usage, 'candidates_token_count', None))

  def classify(self, exn: BaseException) -> Optional[remote.Failure]:
    from google.genai import errors
    if isinstance(exn, errors.APIError):
      response = getattr(exn, 'response', None)
      retry_after = remote.retry_after_from_headers(
          getattr(response, 'headers', None))
      if retry_after is None:
        retry_after = _retry_info_delay(exn.details)
      return remote.classify_status(exn.code, str(exn), retry_after)
    return remote.generic_failure(exn)


def _check_staging(uri: Optional[str], needed: bool) -> None:
  """batch_staging_uri: a gs:// folder, given exactly when Vertex AI
  batches need one."""
  key = 'model_handler.config.batch_staging_uri'
  if needed and not uri:
    _config.fail(_OWNER, key, 'is required with vertexai: true and '
                 'batch_api: true: a Cloud Storage folder (gs://bucket/prefix) '
                 'for the batch request files and their results')
  if uri and not needed:
    _config.fail(_OWNER, key, 'is used only with vertexai: true and '
                 'batch_api: true')
  if uri and not (uri.startswith('gs://') and len(uri) > len('gs://')):
    _config.fail(_OWNER, key, f'must be a gs://bucket/prefix URI, got {uri!r}')


def _retry_info_delay(details) -> Optional[float]:
  """The `retryDelay` of a google.rpc.RetryInfo in an error body ("37s")."""
  try:
    for d in details.get('error', {}).get('details', []):
      if str(d.get('@type', '')).endswith('google.rpc.RetryInfo'):
        m = re.fullmatch(r'([\d.]+)s', str(d.get('retryDelay', '')))
        if m:
          return float(m.group(1))
  except AttributeError:
    pass
  return None
