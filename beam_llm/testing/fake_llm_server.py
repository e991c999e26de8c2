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
- Batch APIs: OpenAI's (fake_batch_api.py), Gemini's
  (fake_gemini_batch_api.py) and Vertex AI's batch prediction jobs
  (fake_vertex_batch_api.py, on Cloud Storage: fake_gcs.py), with the
  faults in `batch_faults`.

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
import json
import random
import re
import threading
import time
from typing import Any, Callable, List, Optional

from beam_llm.testing import fake_llm_http
from beam_llm.testing import fake_llm_protocols as protocols
# Re-exported: what tests import from here.
from beam_llm.testing.fake_llm_http import LoggedRequest  # pylint: disable=unused-import
from beam_llm.testing.fake_llm_protocols import STRUCTURED


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
    # Vertex AI batch prediction jobs, on Cloud Storage objects kept here.
    from beam_llm.testing.fake_gcs import FakeGCS
    from beam_llm.testing.fake_vertex_batch_api import FakeVertexBatchAPI
    self.gcs = FakeGCS()
    self.vertex_batch_api = FakeVertexBatchAPI(self, self.gcs, batch_faults)
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
    self._httpd = fake_llm_http.Server(('127.0.0.1', port), fake_llm_http.Handler)
    self._httpd.fake = self
    self._httpd.tls = False
    self._tls_httpd = None
    if tls:
      import ssl
      context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
      context.load_cert_chain(*tls)
      self._tls_httpd = fake_llm_http.Server((tls_host, tls_port), fake_llm_http.Handler)
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
    if body.get('logprobs') and route in (protocols.chat_completion, protocols.completion):
      answer['choices'][0]['logprobs'] = protocols.logprobs(text, confidence,
                                                   route is protocols.chat_completion)
    return answer

  @staticmethod
  def prompt_of(url: str, body: dict) -> str:
    """The prompt text of a request body (what `reply` gets)."""
    return protocols.prompt_of(url, body)

  def answer_line(self, url: str, body: dict):
    """(status, body) for one Batch API line (fake_batch_api): the form
    checks and answers of the synchronous endpoints."""
    prompt = protocols.prompt_of(url, body)
    accepted, status, message = STRUCTURED[self.structured]
    if protocols.form_of(body) not in accepted:
      return status, {'error': {'message': str(message), 'code': status}}
    route = protocols.chat_completion if url.endswith('/chat/completions') else protocols.completion
    return 200, self.answer(route, body, prompt)

  def answer_gemini(self, body: dict, prompt: str) -> dict:
    """A generateContent answer for one Gemini Batch API line."""
    return self.answer(protocols.gemini, body, prompt)

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
