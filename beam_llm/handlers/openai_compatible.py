"""OpenAI-compatible servers (vLLM, Ollama, llama.cpp, OpenAI) on the official
`openai` client. The client is imported on the worker only."""
from typing import Literal, Optional

from beam_llm import _config
from beam_llm import batch_api
from beam_llm import remote
from beam_llm.batch_api.openai_batches import OpenAIBatchClient
from beam_llm.remote import clients
from beam_llm.handlers import remote_base
from beam_llm.handlers import structured_forms
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import confidence_of
from beam_llm.handlers.base import as_messages

_OWNER = 'GenerateText'


@remote.with_policy
@batch_api.with_options(OpenAIBatchClient)
class OpenAICompatibleHandler(remote_base.RemoteHandler):
  """`model_handler: {type: OpenAICompatible, config: {...}}`.

  Any server that speaks the OpenAI API: vLLM, Ollama, llama.cpp's server,
  OpenAI itself. One request per row through the official `openai` client,
  with its own retries off: the remote-call policy below owns retries (see
  docs/remote.md). GenerateText's parameters become request fields:
  `max_new_tokens` is `max_tokens`; greedy decoding (the default) is
  `temperature: 0`; sampling (decided once for every backend, see
  beam_llm/generation_params.py) sends `temperature` (1 when unset), `top_p`
  and `top_k` (a body field vLLM, llama.cpp and Ollama take);
  `generation_config` entries go into the request body as they are (e.g. `seed`, `stop`, vLLM's
  `repetition_penalty`); `response_schema` is sent in the form the server
  takes (`structured_output`; chat only). Token usage comes from the answer's `usage`.

  Args:
    model: The model name the server knows (e.g. `Qwen/Qwen2.5-0.5B-Instruct`
      on vLLM, `llama3.2` on Ollama, `gpt-4o-mini` on OpenAI).
    base_url: The API root, ending in `/v1`: `http://localhost:8000/v1`
      (vLLM), `http://localhost:11434/v1` (Ollama), `http://localhost:8080/v1`
      (llama.cpp), `https://api.openai.com/v1` (OpenAI).
    api: `chat` (POST /chat/completions; a text prompt is sent as one user
      message) or `completions` (POST /completions; text prompts only).
      Defaults to chat.
    api_key_env: Name of the environment variable that holds the API key,
      read on the worker when the model loads. The key itself never goes in
      the YAML. Defaults to none: no key (local servers).
    structured_output: How `response_schema` is sent: `json_schema`
      (`response_format` of type json_schema: OpenAI, vLLM, llama-server,
      Ollama), `json_object` (`response_format: {type: json_object, schema}`:
      llama-cpp-python's server), `structured_outputs` (vLLM's body field,
      `{json: schema}`, since vLLM 0.10.2), `guided_json` (the body field of
      older vLLM releases: later ones ignore it, unconstrained), or `none`
      (unconstrained; ParseJSON still validates). `auto` starts with
      json_schema and, when the server refuses a form as invalid, moves to
      the next and keeps it for the rest of the run. Defaults to auto.
  """
  backend = 'OpenAICompatible'
  supports_response_schema = True
  supports_confidence = True  # From the answer's `logprobs`.

  def __init__(
      self,
      *,
      model: str,
      base_url: str,
      api: Literal['chat', 'completions'] = 'chat',
      api_key_env: Optional[str] = None,
      structured_output: Literal[
          'auto', 'json_schema', 'json_object', 'structured_outputs',
          'guided_json', 'none'] = 'auto',
      generation: Optional[dict] = None,
      batching: Optional[dict] = None,
      **policy):
    self.batch = batch_api.BatchOptions.take(policy, OpenAIBatchClient)
    super().__init__(generation or {}, batching or {}, policy)
    if api == 'completions' and self._generation.get('response_schema'):
      _config.fail(_OWNER, 'response_schema',
                   'needs api: chat on the OpenAICompatible backend')
    self._model = model
    self._base_url = base_url.rstrip('/')
    self._api = api
    self._api_key_env = api_key_env
    self._structured = structured_output

  def describe(self) -> str:
    return f'OpenAICompatible {self._model} at {self._base_url}'

  def describe_model(self) -> dict:
    from beam_llm import lineage
    return {**super().describe_model(), 'model': self._model,
            'endpoint': lineage.safe_endpoint(self._base_url)}

  def target(self) -> str:
    return self._base_url

  def connect(self, redactor):
    key = clients.api_key(
        self._api_key_env, self.message_prefix(), redactor,
        'leave api_key_env out for a server that needs no key')
    return _Client(
        clients.openai_client(self._base_url, key, self.policy.timeout_secs,
                              self.policy.max_concurrency),
        structured_forms.FormChoice(self._structured, self.message_prefix(), redactor))

  def build_request(self, prompt) -> dict:
    g = self._generation
    if self._api == 'chat':
      messages = ([{'role': 'user', 'content': prompt}]
                  if isinstance(prompt, str) else as_messages(prompt))
      request = {'model': self._model, 'messages': messages}
    elif isinstance(prompt, str):
      request = {'model': self._model, 'prompt': prompt}
    else:
      raise remote_base.PromptError(
          'a chat prompt (a list of messages) needs api: chat; '
          'the completions API takes text')
    if g.get('max_new_tokens'):
      request['max_tokens'] = g['max_new_tokens']
    sampling = self.params.sampling_options()
    request['temperature'] = sampling.pop('temperature')
    if 'top_p' in sampling:
      request['top_p'] = sampling.pop('top_p')
    if g.get('response_schema'):
      # Its form is chosen per endpoint when sent (structured_forms).
      request['response_schema'] = g['response_schema']
    if g.get('confidence'):  # Token log-probabilities: the answer's confidence.
      request['logprobs'] = True
    extra = dict(sampling)  # top_k: not an OpenAI field; vLLM etc. take it.
    extra.update(g.get('generation_config') or {})
    if extra:
      request['extra_body'] = extra
    return request

  def batch_line(self, request: dict) -> tuple:
    """(endpoint path, body) of a built request as a Batch API file line:
    the synchronous body, with response_schema in the configured form
    (`auto`: json_schema, which OpenAI's Batch API takes)."""
    body, chat, schema = _body_of(request)
    if schema is not None:
      form = 'json_schema' if self._structured == 'auto' else self._structured
      body = structured_forms.apply(form, body, schema)
    return '/v1/chat/completions' if chat else '/v1/completions', body

  async def send(self, client, request: dict, timeout_secs: float) -> Generation:
    body, chat, schema = _body_of(request)
    post = lambda body: self._post(client.openai, body, chat, timeout_secs)
    if schema is None:
      return self.read_answer(await post(body), chat)
    form, probe = await client.forms.begin(timeout_secs)
    try:
      while True:
        try:
          answer = self.read_answer(
              await post(structured_forms.apply(form, body, schema)), chat)
          client.forms.accepted(form)
          return answer
        except Exception as exn:  # pylint: disable=broad-except
          form = self._next_form(client.forms, form, exn)
    finally:
      if probe:
        client.forms.end_probe()

  def _next_form(self, forms, form: str, exn: Exception) -> str:
    """The structured-output form to try after `exn`; raises `exn` unless
    it is the server refusing `form` and another form is left."""
    failure = self.classify(exn)
    if not structured_forms.is_schema_refusal(failure):
      raise exn
    form = forms.refused(form, failure.msg)
    if form is None:
      raise exn
    return form

  def _post(self, client, body: dict, chat: bool, timeout_secs: float):
    # The client's generic `post`, its documented way to send any request,
    # answering the raw response: same auth, timeouts and status errors as
    # `chat.completions.create`, without the parameter transformation and
    # typed answer, which cost more CPU per request (~1 ms) than the HTTP
    # exchange itself, the limit at hundreds of requests per second per
    # process (bench/RESULTS.md).
    return client.post(
        '/chat/completions' if chat else '/completions',
        cast_to=_httpx_response(), body=body, options={'timeout': timeout_secs})

  def read_answer(self, response, chat: bool) -> Generation:
    """The Generation in a raw response; BadResponse if there is none."""
    try:
      answer = response.json()
    except ValueError as exn:  # A body cut off in transit: retried.
      raise remote.BadResponse(f'the answer is not JSON: {exn}') from None
    choices = answer.get('choices') if isinstance(answer, dict) else None
    if not choices or not isinstance(choices[0], dict):  # Transient: retried.
      raise remote.BadResponse('the answer has no choices')
    choice = choices[0]
    if chat:
      message = choice.get('message') or {}
      text = message.get('content')
      if not isinstance(text, str):
        refusal = message.get('refusal')
        if refusal:
          raise remote.BadResponse(f'the model refused: {refusal}', retryable=False)
        raise remote.BadResponse(
            f'the answer has no text (finish_reason: {choice.get("finish_reason")})')
    else:
      text = choice.get('text')
      if not isinstance(text, str):
        raise remote.BadResponse('the answer has no text')
    usage = answer.get('usage') or {}
    return Generation(
        text.strip(), usage.get('prompt_tokens'), usage.get('completion_tokens'),
        _confidence(choice.get('logprobs')))

  def classify(self, exn: BaseException) -> Optional[remote.Failure]:
    return remote.openai_failure(exn, self.policy.timeout_secs)


def _confidence(logprobs) -> Optional[float]:
  """From `choices[0].logprobs`: chat (`content: [{logprob}]`) or
  completions (`token_logprobs: [...]`); None when the server sent none."""
  if not isinstance(logprobs, dict):
    return None
  content = logprobs.get('content')
  if isinstance(content, list):
    return confidence_of(c.get('logprob') for c in content if isinstance(c, dict))
  tokens = logprobs.get('token_logprobs')
  return confidence_of(tokens) if isinstance(tokens, list) else None


def _httpx_response():
  import httpx
  return httpx.Response


def _body_of(request: dict):
  """(request body, chat or not, response_schema) of a built request."""
  body = {k: v for k, v in request.items()
          if k not in ('extra_body', 'response_schema')}
  body.update(request.get('extra_body') or {})
  return body, 'messages' in request, request.get('response_schema')


class _Client:
  """The process's async openai client, and the structured-output form its
  endpoint takes."""
  def __init__(self, openai_client, forms: structured_forms.FormChoice):
    self.openai = openai_client
    self.forms = forms
