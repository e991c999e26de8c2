"""The HTTP side of the fake LLM server (beam_llm/testing/fake_llm_server.py):
the threaded server, and the handler that logs each request, applies its
fault (429 with Retry-After, 5xx, timeout, stall, drop, a body cut off),
holds a slot while it answers, and routes it to its protocol's answer or to
a fake Batch API."""
import dataclasses
import email.utils
import http.server
import json
import re
import socket
import sys
import time

from beam_llm.testing import fake_llm_protocols as protocols


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


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  request_queue_size = 1024  # listen() backlog: clients open many at once.

  def handle_error(self, request, client_address):
    # Clients hang up after their own timeouts: expected here, not news.
    if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
      super().handle_error(request, client_address)


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'  # Keep-alive, as real services do.
  # Headers and body go out in one write with Nagle off: otherwise Nagle and
  # delayed ACKs add ~40 ms to every answer, more than the latency we model.
  disable_nagle_algorithm = True

  def log_message(self, *args):  # Quiet: tests read `server.log` instead.
    pass

  @property
  def fake(self):  # The FakeLLMServer.
    return self.server.fake

  def _batch_side(self):
    """The fake Batch API or storage that serves this path, if any."""
    path, fake = self.path.split('?')[0], self.fake
    for api in (fake.gcs, fake.vertex_batch_api):
      if api.owns(path):
        return api
    if fake.gemini_batch_api.owns(path, self.headers):
      return fake.gemini_batch_api
    return fake.batch_api if fake.batch_api.owns(path) else None

  def do_GET(self):
    path = self.path.split('?')[0]
    api = self._batch_side()
    if api is not None:
      return api.serve(self, 'GET', path)
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

  def do_DELETE(self):
    api = self._batch_side()
    if api is not None:
      return api.serve(self, 'DELETE', self.path.split('?')[0])
    return self._error(404, 'NOT_FOUND', f'no DELETE route {self.path}')

  def do_PUT(self):  # Cloud Storage's resumable uploads only.
    raw = self.rfile.read(int(self.headers.get('Content-Length') or 0))
    api = self._batch_side()
    if api is not None:
      return api.serve(self, 'PUT', self.path.split('?')[0], raw)
    return self._error(404, 'NOT_FOUND', f'no PUT route {self.path}')

  def do_POST(self):
    fake = self.fake
    arrived = time.monotonic()
    length = int(self.headers.get('Content-Length') or 0)
    raw = self.rfile.read(length)
    api = self._batch_side()
    if api is not None:
      return api.serve(self, 'POST', self.path.split('?')[0], raw)
    try:
      body = json.loads(raw or b'{}')
    except ValueError:
      body = {}
    path = self.path.split('?')[0]
    entry = LoggedRequest(
        arrived, path, protocols.prompt_of(path, body), body,
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
      entry.form = protocols.form_of(body)
      accepted, status, message = protocols.STRUCTURED[fake.structured]
      if entry.form not in accepted:
        entry.fault, entry.status = 'refused', status
        if message is protocols.VALIDATION:
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
      return protocols.chat_completion
    if path.endswith('/completions'):
      return protocols.completion
    if path.endswith(':generateContent'):
      return protocols.gemini
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
      return protocols.predict if endpoint in known else None
    return None

  def _validation_error(self, code):
    """llama-cpp-python's error body (FastAPI's, OpenAI-shaped)."""
    self._json(code, {'error': {'message': protocols.VALIDATION,
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
