"""Models deployed to Vertex AI endpoints, on `google-cloud-aiplatform`.

The instance sent for a row is built from a declarative template (YAML data
with `${...}` placeholders), never from Python code, so a pipeline stays pure
YAML. The client is imported on the worker only.
"""
import re
import string
import threading
from typing import Any, Mapping, Optional

from beam_llm import _config
from beam_llm import remote
from beam_llm.handlers import remote_base
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import RowPrompt
from beam_llm.handlers.base import as_messages

_OWNER = 'GenerateText'
# What a template can refer to, for each row.
_VARIABLES = ('prompt', 'messages', 'max_new_tokens', 'temperature', 'top_p',
              'top_k')
_ROW = 'row.'  # `${row.FIELD}`: a field of the input row.
_DEFAULT_INSTANCE = {'prompt': '${prompt}'}
_DEFAULT_PARAMETERS = {
    'max_tokens': '${max_new_tokens}', 'temperature': '${temperature}',
    'top_p': '${top_p}', 'top_k': '${top_k}'}
_TEXT_FIELDS = ('content', 'text', 'generated_text', 'output', 'outputs')
# Longest the load-time endpoint lookup keeps retrying a service that does
# not answer (also bounded by deadline_secs).
_LOOKUP_SECS = 60.0


class _Template(string.Template):
  """`${name}` and `${row.field}`."""
  idpattern = r'(?a:[_a-z][_a-z0-9]*(?:\.[_a-z][_a-z0-9]*)?)'


# aiplatform.init sets process-wide defaults; connect one handler at a time.
_INIT_LOCK = threading.Lock()


@remote.with_policy
class VertexAIHandler(remote_base.RemoteHandler):
  """`model_handler: {type: VertexAI, config: {...}}`.

  A model deployed to a Vertex AI endpoint (public, or private with Private
  Service Access), called with `predict` through `google-cloud-aiplatform`
  over REST: one instance per request, one request per row. When the model
  loads on a worker, the endpoint is looked up (GetEndpoint); if it does not
  exist, cannot be reached, or has no model deployed to answer, the
  pipeline stops there with an error that says which.

  The instance and the parameters sent for each row are built from
  templates: YAML data in which a string `${name}` is replaced by a value of
  the row's request. A string that is exactly one placeholder takes the
  value as it is (text, number, list); inside a longer string it is
  inserted as text. Names: `prompt` (the text prompt), `messages` (the chat
  as `[{role, content}]`; a text prompt becomes one user message),
  `max_new_tokens`, `temperature`, `top_p`, `top_k` (GenerateText's), and
  `row.FIELD` for any field of the input row (e.g. `${row.image_uri}`). `$$`
  is a literal `$`. (`${...}` rather than `{{ }}`, which Beam YAML's own
  Jinja pass would expand first.) The service's token usage is not part of
  the predict answer, so no tokens are counted.

  Args:
    endpoint: The endpoint ID (e.g. `1234567890`) or its full resource name
      `projects/P/locations/L/endpoints/E`.
    project: Project of the endpoint. Defaults to the environment's (from
      Application Default Credentials or gcloud).
    location: Region of the endpoint. Defaults to us-central1.
    private: The endpoint is a private endpoint (Private Service Access):
      predictions go to its private URI, which answers only inside its
      peered VPC network, so the workers must run there. Defaults to false.
    instance: Template of the instance sent for a row. Defaults to
      `{prompt: "${prompt}"}` (vLLM and most Model Garden text models; add
      e.g. `max_tokens: "${max_new_tokens}"` for those that read options
      from the instance).
    parameters: Template of the predict `parameters`. Entries whose value is
      unset are left out, and `generation_config` entries are added. Defaults
      to `{max_tokens: "${max_new_tokens}", temperature: "${temperature}",
      top_p: "${top_p}", top_k: "${top_k}"}`.
    response_field: Where the text is in a prediction, as a dotted path
      (e.g. `content`, or `choices.0.text`). Defaults to the prediction
      itself when it is text, else its first field among `content`, `text`,
      `generated_text`, `output`, `outputs`.
    api_endpoint: The API host, e.g. `us-central1-aiplatform.googleapis.com`
      (the default for `location`). An `http://HOST:PORT` URL (a local
      emulator or test server) is called without credentials.
  """
  backend = 'VertexAI'

  def __init__(
      self,
      *,
      endpoint: str,
      project: Optional[str] = None,
      location: str = 'us-central1',
      private: bool = False,
      instance: Optional[Mapping[str, Any]] = None,
      parameters: Optional[Mapping[str, Any]] = None,
      response_field: Optional[str] = None,
      api_endpoint: Optional[str] = None,
      generation: Optional[dict] = None,
      batching: Optional[dict] = None,
      **policy):
    super().__init__(generation or {}, batching or {}, policy)
    self._instance = dict(_DEFAULT_INSTANCE if instance is None else instance)
    self._parameters = dict(
        _DEFAULT_PARAMETERS if parameters is None else parameters)
    for key, template in (('instance', self._instance),
                          ('parameters', self._parameters)):
      unknown = sorted(n for n in set(_placeholders(template)) - set(_VARIABLES)
                       if not n.startswith(_ROW))
      if unknown:
        _config.fail(
            _OWNER, f'model_handler.config.{key}',
            f'uses ${{{unknown[0]}}}; templates know '
            + ', '.join(f'${{{v}}}' for v in _VARIABLES)
            + ' and ${row.FIELD}')
    self._row_fields = sorted(
        n[len(_ROW):] for n in _placeholders([self._instance, self._parameters])
        if n.startswith(_ROW))
    self.wants_row_fields = bool(self._row_fields)
    self._endpoint = endpoint
    self._project = project
    self._location = location
    self._private = private
    self._response_field = response_field
    self._api_endpoint = api_endpoint

  def describe(self) -> str:
    return f'VertexAI endpoint {self._endpoint}'

  def describe_model(self) -> dict:
    from beam_llm import lineage
    where = f'{self._project or "default"}/{self._location}'
    if self._api_endpoint:
      where = f'{lineage.safe_endpoint(self._api_endpoint)} {where}'
    return {**super().describe_model(), 'model': self._endpoint,
            'endpoint': where}

  def check_input_fields(self, names) -> None:
    missing = [f for f in self._row_fields if f not in names]
    if missing:
      _config.fail(
          _OWNER, 'model_handler.config.instance',
          f'uses ${{row.{missing[0]}}}, but the input has no field '
          f'{missing[0]!r} (input fields: {", ".join(names)})')

  def target(self) -> str:
    return f'{self._api_endpoint}|{self._project}|{self._location}|{self._endpoint}'

  def connect(self, redactor):
    from google.api_core import exceptions
    from google.api_core import retry
    from google.cloud import aiplatform
    credentials = None
    if self._api_endpoint and self._api_endpoint.startswith('http://'):
      from google.auth.credentials import AnonymousCredentials
      credentials = AnonymousCredentials()
    with _INIT_LOCK:
      aiplatform.init(
          project=self._project, location=self._location,
          api_endpoint=self._api_endpoint, api_transport='rest',
          credentials=credentials)
      cls = aiplatform.PrivateEndpoint if self._private else aiplatform.Endpoint
      where = (f'endpoint {self._endpoint!r} (project {self._project or "default"}'
               f', location {self._location})')
      try:
        # GetEndpoint now (Endpoint() is lazy), with a bounded retry: the
        # client's own default retries an unreachable service for 2 minutes.
        lookup = aiplatform.Endpoint(
            endpoint_name=self._endpoint, project=self._project,
            location=self._location, credentials=credentials)
        lookup.api_client.get_endpoint(
            name=self._resource_name(), timeout=self.policy.timeout_secs,
            retry=retry.Retry(
                initial=self.policy.initial_backoff_secs,
                maximum=self.policy.max_backoff_secs,
                timeout=min(self.policy.deadline_secs, _LOOKUP_SECS)))
        endpoint = cls(endpoint_name=self._endpoint, project=self._project,
                       location=self._location, credentials=credentials)
        deployed = endpoint.list_models()
      except exceptions.NotFound:
        raise remote_base.RemoteUnavailable(
            f'{_OWNER} [VertexAI]: {where} does not exist (GetEndpoint '
            'answered 404 Not Found); check endpoint, project and location')
      except exceptions.GoogleAPICallError as exn:
        raise remote_base.RemoteUnavailable(
            f'{_OWNER} [VertexAI]: cannot look up {where}: {exn}')
      except ValueError as exn:  # PrivateEndpoint on a public endpoint.
        raise remote_base.RemoteUnavailable(
            f'{_OWNER} [VertexAI]: {where}: {exn} (private: true needs a '
            'private endpoint)')
      except Exception as exn:  # pylint: disable=broad-except
        raise remote_base.RemoteUnavailable(
            f'{_OWNER} [VertexAI]: cannot reach Vertex AI to look up {where}: '
            f'{type(exn).__name__}: {exn}')
    if not deployed:
      raise remote_base.RemoteUnavailable(
          f'{_OWNER} [VertexAI]: {where} has no deployed model, so nothing '
          'can answer predictions; deploy a model to it first')
    self._tune_transport(endpoint)
    return endpoint

  def _resource_name(self) -> str:
    if '/' in self._endpoint:
      return self._endpoint
    from google.cloud.aiplatform import initializer
    project = self._project or initializer.global_config.project
    return f'projects/{project}/locations/{self._location}/endpoints/{self._endpoint}'

  def _tune_transport(self, endpoint) -> None:
    """Connection pools as wide as max_concurrency; no client-side retries.

    These are private attributes of the client (there is no public knob);
    if they move, the client's defaults still work, only less well.
    """
    n = self.policy.max_concurrency
    if self._private:
      import urllib3
      # PrivateEndpoint.predict takes no timeout and retries 3 times by
      # default: give it ours, and no retries (beam_llm.remote owns them).
      endpoint._http_client = urllib3.PoolManager(
          cert_reqs='CERT_NONE', retries=False, maxsize=n,
          timeout=urllib3.Timeout(total=self.policy.timeout_secs))
      return
    try:
      import requests.adapters
      session = endpoint._prediction_client._transport._session  # pylint: disable=protected-access
      adapter = requests.adapters.HTTPAdapter(pool_maxsize=n, max_retries=0)
      session.mount('https://', adapter)
      session.mount('http://', adapter)
    except AttributeError:
      pass

  def build_request(self, prompt) -> dict:
    g = self._generation
    values = {'max_new_tokens': g.get('max_new_tokens'), 'top_p': None,
              'top_k': None, **self.params.sampling_options()}
    if isinstance(prompt, RowPrompt):
      values.update({_ROW + k: _plain(v) for k, v in prompt.fields.items()})
      prompt = prompt.prompt
    if isinstance(prompt, str):
      values['prompt'] = prompt
      values['messages'] = [{'role': 'user', 'content': prompt}]
    else:
      values['prompt'] = None
      values['messages'] = as_messages(prompt)
      if 'prompt' in _placeholders(self._instance):
        raise remote_base.PromptError(
            'the instance template uses ${prompt}, which needs a text prompt; '
            'use ${messages} for chat prompts')
    parameters = _fill(self._parameters, values, drop_unset=True)
    parameters.update(g.get('generation_config') or {})
    return {'instance': _fill(self._instance, values),
            'parameters': parameters or None}

  def send(self, endpoint, request: dict, timeout_secs: float) -> Generation:
    kwargs = {} if self._private else {'timeout': timeout_secs}
    answer = endpoint.predict(
        instances=[request['instance']], parameters=request['parameters'],
        **kwargs)
    predictions = answer.predictions
    if not predictions:
      raise remote.BadResponse('the answer has no predictions')
    return Generation(_text_of(predictions[0], self._response_field).strip())

  def classify(self, exn: BaseException) -> Optional[remote.Failure]:
    from google.api_core import exceptions
    if isinstance(exn, exceptions.DeadlineExceeded):
      return remote.Failure(remote.TIMEOUT, str(exn), retryable=True)
    if isinstance(exn, exceptions.GoogleAPICallError) and exn.code:
      response = getattr(exn, 'response', None)
      return remote.classify_status(
          int(exn.code), str(exn),
          remote.retry_after_from_headers(getattr(response, 'headers', None)))
    if isinstance(exn, (RuntimeError, ValueError)):
      # PrivateEndpoint reports HTTP errors as "429 - Failed to make request"
      # (or "Status code:429" for PSC), without the response's headers.
      m = re.match(r'(\d{3}) - ', str(exn)) or re.search(
          r'Status code:\s*(\d{3})', str(exn))
      if m:
        return remote.classify_status(int(m.group(1)), str(exn))
    return remote.generic_failure(exn)


def _placeholders(template) -> list:
  if isinstance(template, str):
    return [m.group('named') or m.group('braced')
            for m in _Template.pattern.finditer(template)
            if m.group('named') or m.group('braced')]
  if isinstance(template, Mapping):
    return [n for v in template.values() for n in _placeholders(v)]
  if isinstance(template, (list, tuple)):
    return [n for v in template for n in _placeholders(v)]
  return []


def _fill(template, values: dict, drop_unset: bool = False):
  """The template with placeholders replaced by `values`."""
  if isinstance(template, str):
    m = _Template.pattern.fullmatch(template)
    if m and (m.group('named') or m.group('braced')):
      return values.get(m.group('named') or m.group('braced'))
    return _Template(template).substitute(
        {k: '' if v is None else str(v) for k, v in values.items()})
  if isinstance(template, Mapping):
    filled = {k: _fill(v, values, drop_unset) for k, v in template.items()}
    return {k: v for k, v in filled.items()
            if not (drop_unset and v is None)}
  if isinstance(template, (list, tuple)):
    return [_fill(v, values, drop_unset) for v in template]
  return template


def _plain(value):
  """Row values as JSON-able data (nested rows as objects)."""
  if hasattr(value, '_asdict'):
    return {k: _plain(v) for k, v in value._asdict().items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _text_of(prediction, field: Optional[str]) -> str:
  if field:
    value = prediction
    for part in field.split('.'):
      if isinstance(value, Mapping) and part in value:
        value = value[part]
      elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
        value = value[int(part)]
      else:
        raise remote.BadResponse(
            f'the prediction has no {field!r} (response_field): '
            f'{str(prediction)[:200]}')
  else:
    value = prediction
    if isinstance(value, Mapping):
      value = next((value[k] for k in _TEXT_FIELDS if k in value), None)
  if isinstance(value, list) and len(value) == 1:
    value = value[0]
  if not isinstance(value, str):
    raise remote.BadResponse(
        'the prediction holds no text (set response_field to its path): '
        f'{str(prediction)[:200]}')
  return value
