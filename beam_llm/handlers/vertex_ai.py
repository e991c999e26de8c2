"""Models deployed to Vertex AI endpoints, on `google-cloud-aiplatform`.

The instance sent for a row is built from a declarative template (YAML data
with `${...}` placeholders), never from Python code, so a pipeline stays pure
YAML. The client is imported on the worker only.
"""
import re
from typing import Any, Mapping, Optional

from beam_llm import _config
from beam_llm import remote
from beam_llm.handlers import remote_base
from beam_llm.handlers import vertex_endpoint
from beam_llm.handlers import vertex_templates as templates
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import RowPrompt
from beam_llm.handlers.base import as_messages

_OWNER = 'GenerateText'
# What a template can refer to, for each row.
_VARIABLES = ('prompt', 'messages', 'max_new_tokens', 'temperature', 'top_p',
              'top_k')
_DEFAULT_INSTANCE = {'prompt': '${prompt}'}
_DEFAULT_PARAMETERS = {
    'max_tokens': '${max_new_tokens}', 'temperature': '${temperature}',
    'top_p': '${top_p}', 'top_k': '${top_k}'}


@remote.with_policy
class VertexAIHandler(vertex_endpoint.EndpointConnection,
                      remote_base.RemoteHandler):
  """`model_handler: {type: VertexAI, config: {...}}`.

  A model deployed to a Vertex AI endpoint, called with `predict` through
  `google-cloud-aiplatform` over REST: one instance per request, one request
  per row. Every kind of endpoint is supported: shared public endpoints (the
  default), dedicated public endpoints (`dedicated_endpoint`: their own DNS
  name, `ENDPOINT.REGION-PROJECT.prediction.vertexai.goog`, over HTTPS),
  Private Service Connect endpoints (`psc_address`: an address inside the
  VPC, over HTTPS) and Private Service Access endpoints (`private`). The
  retries, error rows and remote policy are the same for all. When the model
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
    dedicated_endpoint: The endpoint is a dedicated public endpoint:
      predictions go over HTTPS to its own DNS name, which the endpoint
      reports (`dedicatedEndpointDns`) when it is looked up; the shared API
      host is used only for that look-up. A shared endpoint is then an error
      at load. (An endpoint that has a dedicated DNS name is called there
      even when this is false, as google-cloud-aiplatform does: the shared
      host does not serve it.) Defaults to false.
    psc_address: The IP address or DNS name of the Private Service Connect
      endpoint (the forwarding rule in your VPC) through which to reach a
      PSC endpoint, e.g. `10.128.0.5`; predictions go over HTTPS to it, so
      the workers must run in that VPC. A host only: no scheme, port or
      path. Defaults to none.
    ca_cert: Path on the workers of a PEM file of the certificate
      authorities that a dedicated or PSC endpoint's TLS certificate is
      checked against, e.g. the CA of the certificate your PSC endpoint
      serves. Defaults to the system's (or the file named by
      REQUESTS_CA_BUNDLE). Certificates are always checked (the client
      library would skip the check for PSC endpoints; beam-llm does not):
      one that does not check out stops the pipeline.
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
      dedicated_endpoint: bool = False,
      psc_address: Optional[str] = None,
      ca_cert: Optional[str] = None,
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
      unknown = sorted(
          n for n in set(templates.placeholders(template)) - set(_VARIABLES)
          if not n.startswith(templates.ROW))
      if unknown:
        _config.fail(
            _OWNER, f'model_handler.config.{key}',
            f'uses ${{{unknown[0]}}}; templates know '
            + ', '.join(f'${{{v}}}' for v in _VARIABLES)
            + ' and ${row.FIELD}')
    self._row_fields = sorted(
        n[len(templates.ROW):]
        for n in templates.placeholders([self._instance, self._parameters])
        if n.startswith(templates.ROW))
    self.wants_row_fields = bool(self._row_fields)
    self._endpoint = endpoint
    self._project = project
    self._location = location
    vertex_endpoint.check_endpoint_kind(
        private, dedicated_endpoint, psc_address, ca_cert)
    self._private = private or bool(psc_address)
    self._dedicated = dedicated_endpoint
    self._psc_address = psc_address
    self._ca_cert = ca_cert
    self._own_address = False  # Known once the endpoint is looked up.
    # Per-thread timeout of the current attempt, read by the session of a
    # dedicated or PSC endpoint (whose predict takes none); made on the
    # worker (a threading.local does not pickle).
    self._timeouts = None
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

  def build_request(self, prompt) -> dict:
    g = self._generation
    values = {'max_new_tokens': g.get('max_new_tokens'), 'top_p': None,
              'top_k': None, **self.params.sampling_options()}
    if isinstance(prompt, RowPrompt):
      values.update({templates.ROW + k: templates.plain(v)
                     for k, v in prompt.fields.items()})
      prompt = prompt.prompt
    if isinstance(prompt, str):
      values['prompt'] = prompt
      values['messages'] = [{'role': 'user', 'content': prompt}]
    else:
      values['prompt'] = None
      values['messages'] = as_messages(prompt)
      if 'prompt' in templates.placeholders(self._instance):
        raise remote_base.PromptError(
            'the instance template uses ${prompt}, which needs a text prompt; '
            'use ${messages} for chat prompts')
    parameters = templates.fill(self._parameters, values, drop_unset=True)
    parameters.update(g.get('generation_config') or {})
    return {'instance': templates.fill(self._instance, values),
            'parameters': parameters or None}

  async def send(self, endpoint, request: dict, timeout_secs: float) -> Generation:
    # The aiplatform client has no async predict for these endpoints.
    return await remote.in_thread(self._predict, endpoint, request, timeout_secs)

  def _predict(self, endpoint, request: dict, timeout_secs: float) -> Generation:
    if self._own_address:
      # The session's adapter applies it (see vertex_transport): predict's
      # own timeout would make the client swap in a session adapter of its
      # own past 120 s.
      self._timeouts.secs = timeout_secs
      kwargs = ({'endpoint_override': self._psc_address} if self._psc_address
                else {'use_dedicated_endpoint': True})
    else:
      kwargs = {} if self._private else {'timeout': timeout_secs}
    try:
      answer = endpoint.predict(
          instances=[request['instance']], parameters=request['parameters'],
          **kwargs)
    except Exception as exn:  # pylint: disable=broad-except
      if self._own_address:
        from beam_llm.handlers import vertex_transport
        if vertex_transport.is_certificate_error(exn):
          # Not a fault of the service: every row would fail the same way.
          raise remote.RemoteUnavailable(
              f'{self.owner} [VertexAI]: the TLS certificate of endpoint '
              f'{self._endpoint!r} is not trusted ({exn}); set ca_cert to '
              'the certificate authorities that issued it') from exn
      raise
    predictions = answer.predictions
    if not predictions:
      raise remote.BadResponse('the answer has no predictions')
    return Generation(
        templates.text_of(predictions[0], self._response_field).strip())

  def classify(self, exn: BaseException) -> Optional[remote.Failure]:
    from google.api_core import exceptions
    if self._own_address:
      from beam_llm.handlers import vertex_transport
      if isinstance(exn, vertex_transport.EndpointHTTPError):
        return remote.classify_status(
            exn.status, str(exn), remote.retry_after_from_headers(exn.headers))
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

