"""A local embedding service for tests and benchmarks: OpenAI-compatible
`POST /v1/embeddings` and Vertex AI `POST .../publishers/google/models/M:predict`,
answering deterministic vectors (a hash of the text, or a rule of the
test's: `vector=`), with scripted faults.

    server = FakeEmbeddingServer(script=['429', '500'], retry_after=0.1).start()
    ... base_url=server.url + '/v1' ...
    server.stop()

`script` faults answer the first requests in order; a request holding a text
that contains `REJECT` gets a 400 (as a service rejects a text it cannot
take), so tests can check that one bad text fails only its own row.
"""
import hashlib
import http.server
import json
import re
import threading
from typing import Callable, List, Optional

import numpy as np

DIM = 8


def fake_vector(text: str, dim: int = DIM) -> List[float]:
  seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'little')
  v = np.random.default_rng(seed).standard_normal(dim)
  return [float(x) for x in v / np.linalg.norm(v)]


class FakeEmbeddingServer:
  def __init__(self, script: Optional[List[str]] = None, retry_after: float = 0.1,
               dim: int = DIM, port: int = 0,
               vector: Optional[Callable[[str], List[float]]] = None):
    self.script = list(script or [])
    self.retry_after = retry_after
    self.dim = dim
    # `vector(text)`: vectors that follow a known rule (texts that look alike
    # lie close), for tests of what embeddings decide; default: a hash.
    self.vector = vector or (lambda text: fake_vector(text, dim))
    self.log = []  # (path, number of texts, Authorization header, fault)
    self._lock = threading.Lock()
    handler = type('Handler', (_Handler,), {'fake': self})
    # `port`: to come back where a stopped server was (outage tests).
    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', port), handler)
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def port(self) -> int:
    return self._server.server_address[1]

  @property
  def url(self) -> str:
    return f'http://127.0.0.1:{self.port}'

  def start(self) -> 'FakeEmbeddingServer':
    self._thread.start()
    return self

  def stop(self) -> None:
    self._server.shutdown()
    self._server.server_close()

  def next_fault(self) -> Optional[str]:
    with self._lock:
      return self.script.pop(0) if self.script else None


class _Handler(http.server.BaseHTTPRequestHandler):
  fake: FakeEmbeddingServer

  def log_message(self, *args):
    pass

  def do_POST(self):
    path = self.path.split('?')[0]
    body = json.loads(self.rfile.read(int(self.headers.get('Content-Length', 0))))
    if path.endswith('/embeddings'):
      texts = body.get('input')
      texts = [texts] if isinstance(texts, str) else list(texts or [])
    elif re.search(r'/publishers/google/models/[^/:]+:predict$', path):
      texts = [i.get('content') for i in body.get('instances') or []]
    else:
      return self._json(404, {'error': {'message': f'no route {path}'}})
    fault = self.fake.next_fault()
    if fault is None and any('REJECT' in (t or '') for t in texts):
      fault = '400'
    self.fake.log.append((path, len(texts), self.headers.get('Authorization'), fault))
    if fault == '429':
      return self._json(429, {'error': {'message': 'slow down', 'code': 429}},
                        {'Retry-After': str(self.fake.retry_after)})
    if fault in ('500', '503'):
      return self._json(int(fault), {'error': {'message': 'oops', 'code': int(fault)}})
    if fault == '400':
      return self._json(400, {'error': {'message': 'a text was rejected', 'code': 400}})
    vectors = [self.fake.vector(t or '') for t in texts]
    if path.endswith('/embeddings'):
      return self._json(200, {'object': 'list', 'model': body.get('model'), 'data': [
          {'object': 'embedding', 'index': i, 'embedding': v}
          for i, v in enumerate(vectors)]})
    return self._json(200, {'predictions': [
        {'embeddings': {'values': v, 'statistics': {'token_count': 3, 'truncated': False}}}
        for v in vectors]})

  def _json(self, code, obj, headers=None):
    data = json.dumps(obj).encode()
    self.send_response(code)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.end_headers()
    self.wfile.write(data)


def trigram_vector(text: str, dim: int = 256) -> List[float]:
  """A bag of character trigrams, hashed into `dim` slots and normalised:
  texts that share spelling lie close (a stand-in for a real embedding
  model that tests can reason about)."""
  padded = f'  {" ".join(text.lower().split())}  '
  v = np.zeros(dim)
  for i in range(len(padded) - 2):
    digest = hashlib.md5(padded[i:i + 3].encode()).digest()
    v[int.from_bytes(digest[:4], 'little') % dim] += 1.0
  norm = np.linalg.norm(v)
  return [float(x) for x in (v / norm if norm else v)]
