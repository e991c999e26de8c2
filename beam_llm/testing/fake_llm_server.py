"""A local stand-in for remote LLM services, with switches to inject faults.

It speaks just enough of three protocols for the real client libraries:

- OpenAI: `POST /v1/chat/completions` and `POST /v1/completions`.
- Vertex AI: `GET /v1/projects/P/locations/L/endpoints/E` (GetEndpoint) and
  `POST .../endpoints/E:predict`; `POST /private/E:predict` plays a private
  (PSA) endpoint's predict URI. With `tls=(certfile, keyfile)` the server
  also listens for HTTPS (`tls_address`), which plays the host of dedicated
  endpoints (GetEndpoint names it as their `dedicatedEndpointDns`) and of
  Private Service Connect endpoints (their PSC address); as on Vertex AI,
  those endpoints answer predict only there, and the shared API only for
  the others.
- Gemini: `POST /v1beta/models/M:generateContent`.
- Batch APIs: OpenAI's (fake_batch_api.py) and Gemini's
  (fake_gemini_batch_api.py), with the faults in `batch_faults`.

Faults are drawn per request (every attempt, retries included) from seeded
probabilities, or taken in order from `script` first. The server can also be
made slow (`latency_secs`) and narrow (`slots`: at most that many requests are
served at once; the rest queue), which is how the benchmark gives it a known
capacity of slots / latency requests per second.

Every request is logged (arrival time, path, the prompt it carried, the fault
it got), and every Retry-After it sends is logged as a window, so tests can
check what a client did, not what it says it did.

    python -m beam_llm.testing.fake_llm_server --port 8000 --latency_secs 0.1 --slots 32
"""
import argparse
import dataclasses
import email.utils
import http.server
import json
import random
import re
import socket
import sys
import threading
import time
from typing import Any, Callable, List, Optional


@dataclasses.dataclass
class Faults:
  """What goes wrong, per request. Probabilities are drawn in this order."""
  rate_limited: float = 0.0  # 429
  server_error: float = 0.0  # 500 or 503, half each
  timeout: float = 0.0  # answers only after slow_secs
  drop: float = 0.0  # closes the connection without answering
  malformed: float = 0.0  # 200 with a body cut off mid-JSON
  stall: float = 0.0  # answers nothing for slow_secs, then drops the connection
  # The wait asked for with 429s: None (none), seconds (int or float) as a
  # Retry-After header, 'date:N' for a Retry-After HTTP date N seconds
  # ahead, or 'info:N' for a google.rpc.RetryInfo of N seconds in the body.
  retry_after: Optional[object] = None
  slow_secs: float = 2.0
  # Faults to hand out first, in order, before drawing: 'ok', 'timeout',
  # 'drop', 'malformed', 'empty' (a 200 with `{}`), any HTTP status code
  # ('429', '503', '400', ...), or 'CODE:validation' (that status with a
  # request-validation message, as llama-cpp-python sends with a 500).
  script: List[str] = dataclasses.field(default_factory=list)
  # When set, scripted faults go only to requests whose prompt contains
  # this text (tests that need a fault on a known row, not a random one).
  script_for: str = ''
  # Put the request's auth headers into error bodies (tests redaction).
  leak_auth_in_errors: bool = False


@dataclasses.dataclass
class LoggedRequest:
  arrived: float
  path: str
  prompt: str
  body: dict = dataclasses.field(default_factory=dict)
  auth: str = ''  # The Authorization or x-goog-api-key header it carried.
  fault: str = ''
  status: int = 0
  form: str = 'none'  # The structured-output form the request carried.
  tls: bool = False  # Whether it came over the HTTPS listener.


def default_reply(prompt: str) -> str:
  return f'echo: {prompt}'


class FakeLLMServer:
  """Start with `with FakeLLMServer(...) as server:`; `server.url` is its root."""
  def __init__(
      self,
      faults: Optional[Faults] = None,
      latency_secs: float = 0.0,
      slots: Optional[int] = None,
      # prompt -> answer text, or (answer text, the model's confidence).
      reply: Callable[[str], Any] = default_reply,
      endpoints=('1234',),
      private_endpoints=('5678',),
      undeployed_endpoints=('4321',),
      dedicated_endpoints=('2468',),
      psc_endpoints=('1357',),
      tls: Optional[tuple] = None,
      tls_host: str = '127.0.0.1',
      tls_port: int = 0,
      seed: int = 0,
      port: int = 0,
      reject_when_full: bool = False,
      structured: str = 'openai',
      batch_faults=None):
    self.faults = faults or Faults()
    # The OpenAI Batch API (/v1/files, /v1/batches), its faults in batch_faults.
    from beam_llm.testing.fake_batch_api import FakeBatchAPI
    self.batch_api = FakeBatchAPI(self, batch_faults)
    # Gemini's Batch Mode (files upload, :batchGenerateContent, batches).
    from beam_llm.testing.fake_gemini_batch_api import FakeGeminiBatchAPI
    self.gemini_batch_api = FakeGeminiBatchAPI(self, batch_faults)
    self.latency_secs = latency_secs
    self.reply = reply
    self.endpoints = set(endpoints)
    self.private_endpoints = set(private_endpoints)
    self.undeployed_endpoints = set(undeployed_endpoints)
    self.dedicated_endpoints = set(dedicated_endpoints)
    self.psc_endpoints = set(psc_endpoints)
    self.log: List[LoggedRequest] = []
    self.retry_after_windows: List[tuple] = []  # (sent at, in force until)
    self.max_in_flight = 0
    self.first_arrival = None  # time.monotonic() of the first POST
    self.last_done = None  # ... and of the end of the last answer
    self._in_flight = 0
    # Time-weighted requests in flight (their mean over the busy time).
    self._in_flight_area = 0.0
    self._in_flight_since = None
    self._lock = threading.Lock()
    self._random = random.Random(seed)
    self._slots = threading.BoundedSemaphore(slots) if slots else None
    # A hosted API's behaviour: a request beyond `slots` gets a 429 at once
    # instead of a place in the queue.
    self.reject_when_full = reject_when_full
    # Which structured-output forms the server takes, as a real one does
    # (see STRUCTURED); a form it does not take is refused its way.
    self.structured = structured
    self.rejected = 0
    self.healthy = True  # What GET /health answers: 200, or 503 when False.
    self._httpd = _Server(('127.0.0.1', port), _Handler)
    self._httpd.fake = self
    self._httpd.tls = False
    self._tls_httpd = None
    if tls:
      import ssl
      context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
      context.load_cert_chain(*tls)
      self._tls_httpd = _Server((tls_host, tls_port), _Handler)
      self._tls_httpd.socket = context.wrap_socket(
          self._tls_httpd.socket, server_side=True)
      self._tls_httpd.fake = self
      self._tls_httpd.tls = True
    self._threads = []

  @property
  def port(self) -> int:
    return self._httpd.server_address[1]

  def answer(self, route, body: dict, prompt: str) -> dict:
    """The answer body for `prompt` in `route`'s shape, from `reply`. A
    reply may say how sure the model is, (text, probability): sent as
    `logprobs` when the request asks for them."""
    text = self.reply(prompt)
    text, confidence = text if isinstance(text, tuple) else (text, 1.0)
    answer = route(body, prompt, text)
    if body.get('logprobs') and route in (_chat_completion, _completion):
      answer['choices'][0]['logprobs'] = _logprobs(text, confidence,
                                                   route is _chat_completion)
    return answer

  @staticmethod
  def prompt_of(url: str, body: dict) -> str:
    """The prompt text of a request body (what `reply` gets)."""
    return _prompt_of(url, body)

  def answer_line(self, url: str, body: dict):
    """(status, body) for one Batch API line (fake_batch_api): the form
    checks and answers of the synchronous endpoints."""
    prompt = _prompt_of(url, body)
    accepted, status, message = STRUCTURED[self.structured]
    if _form_of(body) not in accepted:
      return status, {'error': {'message': str(message), 'code': status}}
    route = _chat_completion if url.endswith('/chat/completions') else _completion
    return 200, self.answer(route, body, prompt)

  def answer_gemini(self, body: dict, prompt: str) -> dict:
    """A generateContent answer for one Gemini Batch API line."""
    return self.answer(_gemini, body, prompt)

  @property
  def url(self) -> str:
    return f'http://127.0.0.1:{self.port}'

  @property
  def tls_address(self) -> Optional[str]:
    """`HOST:PORT` of the HTTPS listener (`HOST` alone on port 443)."""
    if not self._tls_httpd:
      return None
    host, port = self._tls_httpd.server_address[:2]
    return host if port == 443 else f'{host}:{port}'

  def _servers(self):
    return [s for s in (self._httpd, self._tls_httpd) if s]

  def start(self) -> 'FakeLLMServer':
    for httpd in self._servers():
      thread = threading.Thread(
          target=httpd.serve_forever, kwargs={'poll_interval': 0.05},
          daemon=True)
      thread.start()
      self._threads.append(thread)
    return self

  def stop(self) -> None:
    for httpd in self._servers():
      httpd.shutdown()
      httpd.server_close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def _count_in_flight(self, change: int) -> None:
    """Holds self._lock."""
    now = time.monotonic()
    if self._in_flight_since is not None:
      self._in_flight_area += self._in_flight * (now - self._in_flight_since)
    self._in_flight_since = now
    self._in_flight += change

  def prompts_answered(self) -> List[str]:
    return [r.prompt for r in self.log if r.status == 200 and r.fault == 'ok']

  def _choose_fault(self, prompt: str) -> str:
    f = self.faults
    with self._lock:
      if f.script and f.script_for in prompt:
        return f.script.pop(0)
      x = self._random.random()
    for name, p in (('429', f.rate_limited), ('5xx', f.server_error),
                    ('timeout', f.timeout), ('drop', f.drop),
                    ('malformed', f.malformed), ('stall', f.stall)):
      if x < p:
        if name == '5xx':
          return '500' if self._random.random() < 0.5 else '503'
        return name
      x -= p
    return 'ok'


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  request_queue_size = 1024  # listen() backlog: clients open many at once.

  def handle_error(self, request, client_address):
    # Clients hang up after their own timeouts: expected here, not news.
    if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
      super().handle_error(request, client_address)


def _prompt_of(path: str, body: dict) -> str:
  """The text a request asks about, for logs and echo replies."""
  if 'messages' in body:
    return '\n'.join(str(m.get('content')) for m in body['messages'])
  if 'prompt' in body:
    return str(body['prompt'])
  if 'instances' in body:
    inst = body['instances'][0] if body['instances'] else {}
    if isinstance(inst, dict):
      if 'prompt' in inst:
        return str(inst['prompt'])
      if 'messages' in inst:
        return '\n'.join(str(m.get('content')) for m in inst['messages'])
    return json.dumps(inst, sort_keys=True)
  if 'contents' in body:
    return '\n'.join(
        p.get('text', '') for c in body['contents'] for p in c.get('parts', []))
  return ''


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'  # Keep-alive, as real services do.
  # Headers and body go out in one write with Nagle off: otherwise Nagle and
  # delayed ACKs add ~40 ms to every answer, more than the latency we model.
  disable_nagle_algorithm = True

  def log_message(self, *args):  # Quiet: tests read `server.log` instead.
    pass

  @property
  def fake(self) -> FakeLLMServer:
    return self.server.fake

  def do_GET(self):
    path = self.path.split('?')[0]
    if self.fake.gemini_batch_api.owns(path, self.headers):
      return self.fake.gemini_batch_api.serve(self, 'GET', path)
    if self.fake.batch_api.owns(path):
      return self.fake.batch_api.serve(self, 'GET', path)
    if path == '/health':  # vLLM's readiness check.
      return self._json(200 if self.fake.healthy else 503, {})
    if path == '/v1/models':
      return self._json(200, {'object': 'list', 'data': [
          {'id': 'fake', 'object': 'model', 'owned_by': 'fake'}]})
    if path == '/_stats':  # For benchmarks that run the server elsewhere.
      fake = self.fake
      with fake._lock:
        stats = {
            'requests': len(fake.log), 'max_in_flight': fake.max_in_flight,
            'rejected': fake.rejected,
            'busy_secs': (fake.last_done - fake.first_arrival
                          if fake.log and fake.last_done else 0.0)}
        stats['mean_in_flight'] = (fake._in_flight_area / stats['busy_secs']
                                   if stats['busy_secs'] else 0.0)
      return self._json(200, stats)
    m = re.fullmatch(r'/v1(?:beta1)?/projects/([^/]+)/locations/([^/]+)/endpoints/([^/:]+)', path)
    if not m:
      return self._error(404, 'NOT_FOUND', f'no route {path}')
    project, location, endpoint = m.groups()
    name = f'projects/{project}/locations/{location}/endpoints/{endpoint}'
    fake = self.fake
    if endpoint not in (fake.endpoints | fake.private_endpoints
                        | fake.undeployed_endpoints | fake.dedicated_endpoints
                        | fake.psc_endpoints):
      return self._error(404, 'NOT_FOUND', f'Endpoint `{name}` not found.')
    deployed = {'id': '42', 'model': f'projects/{project}/locations/{location}/models/7'}
    resource = {'name': name, 'displayName': 'fake', 'createTime': '2024-01-01T00:00:00Z'}
    if endpoint in fake.private_endpoints:
      deployed['privateEndpoints'] = {
          'predictHttpUri': f'{fake.url}/private/{endpoint}:predict'}
      resource['network'] = 'projects/1/global/networks/fake'
    if endpoint in fake.dedicated_endpoints:
      resource['dedicatedEndpointEnabled'] = True
      resource['dedicatedEndpointDns'] = fake.tls_address or ''
    if endpoint in fake.psc_endpoints:
      resource['privateServiceConnectConfig'] = {
          'enablePrivateServiceConnect': True, 'projectAllowlist': [project]}
      deployed['privateEndpoints'] = {
          'serviceAttachment': f'projects/t/regions/{location}/serviceAttachments/sa'}
    if endpoint not in self.fake.undeployed_endpoints:
      resource['deployedModels'] = [deployed]
    self._json(200, resource)

  def do_POST(self):
    fake = self.fake
    arrived = time.monotonic()
    length = int(self.headers.get('Content-Length') or 0)
    raw = self.rfile.read(length)
    if fake.gemini_batch_api.owns(self.path.split('?')[0], self.headers):
      return fake.gemini_batch_api.serve(self, 'POST', self.path.split('?')[0],
                                         raw)
    if fake.batch_api.owns(self.path.split('?')[0]):
      return fake.batch_api.serve(self, 'POST', self.path.split('?')[0], raw)
    try:
      body = json.loads(raw or b'{}')
    except ValueError:
      body = {}
    path = self.path.split('?')[0]
    entry = LoggedRequest(
        arrived, path, _prompt_of(path, body), body,
        self.headers.get('Authorization') or self.headers.get('x-goog-api-key')
        or '', tls=self.server.tls)
    with fake._lock:
      fake.log.append(entry)
      if fake.first_arrival is None:
        fake.first_arrival = arrived
    # In flight: arrived and not yet answered, queued for a slot included.
    with fake._lock:
      fake._count_in_flight(+1)
      fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
    slot_held = bool(fake._slots)
    if fake._slots:
      if not fake._slots.acquire(blocking=not fake.reject_when_full):
        with fake._lock:
          fake.rejected += 1
          fake._count_in_flight(-1)
        entry.fault, entry.status = 'full', 429
        return self._error(429, 'RESOURCE_EXHAUSTED', 'All slots are busy')
    try:
      if fake.latency_secs:
        time.sleep(fake.latency_secs)
      entry.form = _form_of(body)
      accepted, status, message = STRUCTURED[fake.structured]
      if entry.form not in accepted:
        entry.fault, entry.status = 'refused', status
        if message is _VALIDATION:
          return self._validation_error(status)
        return self._error(status, 'INVALID_ARGUMENT', message)
      entry.fault = fake._choose_fault(entry.prompt)
      if entry.fault == 'stall' and fake._slots:
        # A stall on the way (a network black hole) holds no server slot.
        fake._slots.release()
        slot_held = False
      self._answer(entry, path, body)
    finally:
      with fake._lock:
        fake._count_in_flight(-1)
        fake.last_done = time.monotonic()
      if fake._slots and slot_held:
        fake._slots.release()

  def _answer(self, entry: LoggedRequest, path: str, body: dict):
    fake, fault = self.fake, entry.fault
    if fault == 'stall':
      time.sleep(fake.faults.slow_secs)
      fault = 'drop'
    if fault == 'drop':
      self.close_connection = True
      try:
        self.connection.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass
      return
    if fault == 'timeout':
      time.sleep(fake.faults.slow_secs)
      fault = 'ok'  # The client has given up by now; answer anyway.
    if fault == '429':
      headers, details = {}, None
      ra = fake.faults.retry_after
      if ra is not None:
        if isinstance(ra, str) and ra.startswith('date:'):
          # HTTP dates have whole seconds: the wait in force is up to the
          # second named, not `secs` from now.
          target = int(time.time() + float(ra[5:]))
          headers['Retry-After'] = email.utils.formatdate(target, usegmt=True)
          secs = target - time.time()
        elif isinstance(ra, str) and ra.startswith('info:'):
          secs = float(ra[5:])
          details = [{'@type': 'type.googleapis.com/google.rpc.RetryInfo',
                      'retryDelay': f'{secs}s'}]
        else:
          secs = float(ra)
          headers['Retry-After'] = str(ra)
        now = time.monotonic()
        with fake._lock:
          fake.retry_after_windows.append((now, now + secs))
      entry.status = 429
      return self._error(429, 'RESOURCE_EXHAUSTED', 'Too many requests',
                         headers, details)
    if fault.endswith(':validation'):  # llama-cpp-python's refusal shape.
      entry.status = int(fault.split(':')[0])
      return self._validation_error(entry.status)
    if fault.isdigit():
      entry.status = int(fault)
      return self._error(entry.status, 'UNAVAILABLE' if entry.status >= 500
                         else 'INVALID_ARGUMENT', f'Error {fault}')
    if fault == 'empty':  # Valid JSON, but no answer in it.
      entry.status = 200
      return self._json(200, {})
    if fault == 'malformed':
      entry.status = 200
      return self._send(200, b'{"choices": [{"message": {"role": "assist',
                        'application/json')
    route = self._route(path)
    if route is None:
      entry.status = 404
      return self._error(404, 'NOT_FOUND', f'no route {path}')
    entry.status = 200
    self._json(200, fake.answer(route, body, entry.prompt))

  def _route(self, path: str):
    if path.endswith('/chat/completions'):
      return _chat_completion
    if path.endswith('/completions'):
      return _completion
    if path.endswith(':generateContent'):
      return _gemini
    m = re.search(r'/endpoints/([^/:]+):predict$|^/private/([^/:]+):predict$', path)
    if m:
      endpoint = m.group(1) or m.group(2)
      fake = self.fake
      if m.group(2):
        known = fake.private_endpoints
      elif self.server.tls:  # A dedicated endpoint's DNS, or a PSC address.
        known = fake.dedicated_endpoints | fake.psc_endpoints
      else:  # The shared API serves neither.
        known = fake.endpoints
      return _predict if endpoint in known else None
    return None

  def _validation_error(self, code):
    """llama-cpp-python's error body (FastAPI's, OpenAI-shaped)."""
    self._json(code, {'error': {'message': _VALIDATION,
                                'type': 'internal_server_error',
                                'param': None, 'code': None}})

  def _error(self, code, status, message, headers=None, details=None):
    if self.fake.faults.leak_auth_in_errors:
      message += (f' (authorization: {self.headers.get("Authorization")}, '
                  f'x-goog-api-key: {self.headers.get("x-goog-api-key")})')
    error = {'code': code, 'message': message, 'status': status,
             'type': status.lower()}
    if details:
      error['details'] = details
    self._json(code, {'error': error}, headers)

  def _json(self, code, obj, headers=None):
    self._send(code, json.dumps(obj).encode(), 'application/json', headers)

  def _send(self, code, data: bytes, content_type, headers=None):
    try:
      self.send_response(code)
      self.send_header('Content-Type', content_type)
      self.send_header('Content-Length', str(len(data)))
      for k, v in (headers or {}).items():
        self.send_header(k, v)
      self._headers_buffer.append(b'\r\n' + data)
      self.flush_headers()
    except OSError:  # The client hung up (e.g. after its own timeout).
      self.close_connection = True


def _form_of(body: dict) -> str:
  fmt = body.get('response_format')
  if isinstance(fmt, dict):
    return fmt.get('type', 'none')
  return 'guided_json' if 'guided_json' in body else 'none'


# What llama-cpp-python's server (0.3.36, checked with
# scripts/check_llama_cpp_server.py) answers with an HTTP 500 to a
# response_format it does not take: its pydantic error and a traceback line.
_VALIDATION = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
    "'response_format', 'type'), 'msg': \"Input should be 'text' or "
    "'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' "
    "or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, "
    "in create_chat_completion\n    POST /v1/chat/completions")


# Server -> (forms it takes, status and message of its refusal of others).
STRUCTURED = {
    # OpenAI, and llama.cpp's llama-server: response_format json_schema or
    # json_object.
    'openai': ({'none', 'json_schema', 'json_object'}, 400,
               "Unrecognized request argument supplied: guided_json"),
    # llama-cpp-python's server: json_object (with a `schema`), not
    # json_schema, refused with an HTTP 500 carrying pydantic's message. A
    # `guided_json` field passes and is ignored: the answer is unconstrained.
    'llama-cpp-python': ({'none', 'json_object', 'guided_json'}, 500,
                         _VALIDATION),
    # vLLM: every form.
    'vllm': ({'none', 'json_schema', 'json_object', 'guided_json'}, 400, ''),
    # A server without structured output that rejects what it does not know.
    'text-only': ({'none'}, 400,
                  "response_format is not supported by this server"),
}


def _tokens(text: str) -> int:
  return len(text.split())


def _logprobs(text: str, confidence: float, chat: bool) -> dict:
  """One entry per word, their log-probabilities summing to
  log(confidence): chat's `content` form, or completions' lists."""
  import math
  words = text.split() or ['']
  each = math.log(max(confidence, 1e-300)) / len(words)
  if chat:
    return {'content': [{'token': w, 'logprob': each, 'top_logprobs': []}
                        for w in words]}
  return {'tokens': words, 'token_logprobs': [each] * len(words)}


def _chat_completion(body, prompt, text):
  return {
      'id': 'chatcmpl-fake', 'object': 'chat.completion', 'created': int(time.time()),
      'model': body.get('model', ''),
      'choices': [{'index': 0, 'finish_reason': 'stop',
                   'message': {'role': 'assistant', 'content': text}}],
      'usage': {'prompt_tokens': _tokens(prompt), 'completion_tokens': _tokens(text),
                'total_tokens': _tokens(prompt) + _tokens(text)},
  }


def _completion(body, prompt, text):
  return {
      'id': 'cmpl-fake', 'object': 'text_completion', 'created': int(time.time()),
      'model': body.get('model', ''),
      'choices': [{'index': 0, 'finish_reason': 'stop', 'text': text}],
      'usage': {'prompt_tokens': _tokens(prompt), 'completion_tokens': _tokens(text),
                'total_tokens': _tokens(prompt) + _tokens(text)},
  }


def _gemini(body, prompt, text):
  return {
      'candidates': [{'content': {'role': 'model', 'parts': [{'text': text}]},
                      'finishReason': 'STOP', 'index': 0}],
      'usageMetadata': {'promptTokenCount': _tokens(prompt),
                        'candidatesTokenCount': _tokens(text),
                        'totalTokenCount': _tokens(prompt) + _tokens(text)},
  }


def _predict(body, prompt, text):
  return {'predictions': [text for _ in body.get('instances') or [None]],
          'deployedModelId': '42'}


def _probability(text: str) -> float:
  value = float(text)
  if not 0 <= value <= 1:
    raise argparse.ArgumentTypeError(
        f'{text} is not a probability: give a share from 0 to 1 (0.2: one '
        'request in five)')
  return value


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--port', type=int, default=8000,
                      help='port to listen on, on 127.0.0.1 (default 8000)')
  parser.add_argument('--latency_secs', type=float, default=0.0,
                      help='seconds each answer takes (default 0)')
  parser.add_argument('--slots', type=int, default=None,
                      help='requests served at once; more wait in a queue '
                      '(default: no limit)')
  parser.add_argument('--reject_when_full', action='store_true',
                      help='answer 429 instead of queueing past --slots')
  parser.add_argument(
      '--rate_limited', type=_probability, default=0.0, metavar='P',
      help='answer this share of requests (0 to 1) with 429 Too Many Requests')
  parser.add_argument(
      '--server_error', type=_probability, default=0.0, metavar='P',
      help='answer this share of requests (0 to 1) with a 500 or 503')
  for name, what in (('timeout', 'answer only after --slow_secs'),
                     ('drop', 'close the connection without answering'),
                     ('malformed', 'answer 200 with a body cut off'),
                     ('stall', 'wait --slow_secs, then close the connection')):
    parser.add_argument(f'--{name}', type=_probability, default=0.0,
                        metavar='P',
                        help=f'share of requests (0 to 1) to {what}')
  parser.add_argument('--slow_secs', type=float, default=2.0,
                      help='seconds of a timeout or a stall (default 2)')
  parser.add_argument('--json_reply', action='store_true',
                      help='answer {"sentiment": 0, "summary": ...} to everything')
  from beam_llm.testing.fake_batch_api import BatchFaults
  batch = BatchFaults()
  for name, kind, what in (
      ('max_lines_per_file', int, 'fail validation of a batch file with more lines'),
      ('line_server_error', _probability, 'answer this share of batch lines with a 500'),
      ('expire_first_half', bool, 'let the first batch expire half done'),
      ('in_progress_secs', float, 'seconds a batch stays in progress')):
    parser.add_argument(
        f'--batch_{name}', dest=f'batch_{name}', default=getattr(batch, name),
        help=f'Batch API: {what}', **({'action': 'store_true'} if kind is bool
                                       else {'type': kind}))
  args = parser.parse_args(argv)
  for name in ('max_lines_per_file', 'line_server_error', 'expire_first_half',
               'in_progress_secs'):
    setattr(batch, name, getattr(args, f'batch_{name}'))
  reply = sentiment_reply if args.json_reply else default_reply
  server = FakeLLMServer(
      Faults(rate_limited=args.rate_limited, server_error=args.server_error,
             timeout=args.timeout, drop=args.drop, malformed=args.malformed,
             stall=args.stall, slow_secs=args.slow_secs),
      latency_secs=args.latency_secs, slots=args.slots, reply=reply,
      port=args.port, reject_when_full=args.reject_when_full,
      batch_faults=batch)
  print(f'listening on {server.url}', flush=True)
  server._httpd.serve_forever()


def sentiment_reply(prompt: str) -> str:
  """A schemas/sentiment_summary.json answer: neutral, quoting the chat."""
  chat = re.search(r'<chat>(.*?)</chat>', prompt, re.S)
  text = ' '.join((chat.group(1) if chat else prompt).split())
  return json.dumps({'sentiment': 0, 'summary': text[:80]})


if __name__ == '__main__':
  main()
