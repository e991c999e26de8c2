"""The OpenAI Batch API for FakeLLMServer: files and batches, with faults.

Enough of the protocol for the real `openai` client:

- `POST /v1/files` (multipart, purpose=batch), `GET /v1/files/ID`,
  `GET /v1/files/ID/content`, `DELETE /v1/files/ID`;
- `POST /v1/batches`, `GET /v1/batches` (newest first, `limit`, `after`),
  `GET /v1/batches/ID`, `POST /v1/batches/ID/cancel`.

A batch moves validating -> in_progress -> completed (or failed, expired,
cancelled) as time passes (`validating_secs`, `in_progress_secs`: short in
tests), judged when a client looks. When it ends, each line is answered as
the server answers `/chat/completions` (its `reply`, its structured-output
behaviour); its output file holds the 200s, its error file the rest, as
OpenAI's does. Faults (`BatchFaults`): a cap on lines per file (more fails
validation), a share of lines answered with a 500, lines refused with a 400,
and the first batch expiring (or cancelled) with half its lines done (the
rest are `batch_expired` / `batch_cancelled` lines in the error file).

`FakeBatchAPI.lines` counts the lines of every batch created, so tests can
check what was paid for; `deleted` lists the files deleted, and
`delete_error` (an HTTP status) makes every delete fail with it.
"""
import dataclasses
import email.parser
import itertools
import json
import random
import re
import threading
import time
import urllib.parse
from typing import Dict, List, Optional


@dataclasses.dataclass
class BatchFaults:
  max_lines_per_file: Optional[int] = None  # More fails validation.
  line_server_error: float = 0.0  # Share of lines answered with a 500.
  invalid_for: str = ''  # Lines whose prompt holds this text get a 400.
  expire_first_half: bool = False  # The first batch expires half done.
  cancel_first_half: bool = False  # The first batch is cancelled half done.
  validating_secs: float = 0.05
  in_progress_secs: float = 0.2
  seed: int = 0

  def phase(self, age: float, lines: int, first: bool) -> str:
    """Where a batch of `lines` lines, created `age` seconds ago, stands
    (each fake names it its provider's way): 'validating'; 'too_large'
    (validation failed: over `max_lines_per_file`); 'running'; or how it
    ended: 'expired' / 'cancelled' (the first batch, with those faults) or
    'succeeded'."""
    if age < self.validating_secs:
      return 'validating'
    if self.max_lines_per_file is not None and lines > self.max_lines_per_file:
      return 'too_large'
    if age < self.validating_secs + self.in_progress_secs:
      return 'running'
    if first and self.expire_first_half:
      return 'expired'
    if first and self.cancel_first_half:
      return 'cancelled'
    return 'succeeded'


_DONE = ('completed', 'failed', 'expired', 'cancelled')


class FakeBatchAPI:
  def __init__(self, server, faults: Optional[BatchFaults] = None):
    self._server = server  # The FakeLLMServer: its reply and structured mode.
    self.faults = faults or BatchFaults()
    self.files: Dict[str, dict] = {}
    self.batches: Dict[str, dict] = {}
    self.lines = 0  # Lines of every batch created (paid for, if answered).
    self.retrieves = 0
    self.deleted: List[str] = []
    self.delete_error = 0
    self._ids = itertools.count(1)
    self._random = random.Random(self.faults.seed)
    self._lock = threading.Lock()

  @staticmethod
  def owns(path: str) -> bool:
    return bool(re.match(r'/v1/(files|batches)(/|$)', path))

  def serve(self, handler, method: str, path: str, raw: bytes = b''):
    """Answers one request on `handler` (the server's request handler)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
    parts = path.strip('/').split('/')[1:]  # files, ID, content / batches, ...
    with self._lock:
      if parts == ['files'] and method == 'POST':
        return handler._json(200, self._upload(handler.headers, raw))
      if parts == ['batches'] and method == 'POST':
        return self._create(handler, json.loads(raw or b'{}'))
      if parts == ['batches']:
        return handler._json(200, self._list(query))
      name = parts[1] if len(parts) > 1 else ''
      if parts[0] == 'files' and method == 'DELETE' and len(parts) == 2:
        return self._delete(handler, name)
      if parts[0] == 'files' and name in self.files:
        f = self.files[name]
        if parts[2:] == ['content']:
          return handler._send(200, f['data'], 'application/octet-stream')
        return handler._json(200, f['object'])
      if parts[0] == 'batches' and name in self.batches:
        batch = self.batches[name]
        if parts[2:] == ['cancel'] and method == 'POST':
          if batch['status'] not in _DONE:
            self._finish(batch, 'cancelled', done=0)
          return handler._json(200, batch)
        self.retrieves += 1
        return handler._json(200, self._advance(batch))
    return handler._error(404, 'NOT_FOUND', f'no {method} route {path}')

  def _delete(self, handler, file_id: str):
    if self.delete_error:
      return handler._error(self.delete_error, 'ERROR', 'cannot delete')
    if self.files.pop(file_id, None) is None:
      return handler._error(404, 'NOT_FOUND', f'No such File object: {file_id}')
    self.deleted.append(file_id)
    return handler._json(200, {'id': file_id, 'object': 'file',
                               'deleted': True})

  def _new_id(self, prefix: str) -> str:
    return f'{prefix}-{next(self._ids)}'

  def _store(self, data: bytes, purpose: str, filename: str) -> dict:
    file_id = self._new_id('file')
    obj = {'id': file_id, 'object': 'file', 'bytes': len(data),
           'created_at': int(time.time()), 'filename': filename,
           'purpose': purpose, 'status': 'processed'}
    self.files[file_id] = {'object': obj, 'data': data}
    return obj

  def _upload(self, headers, raw: bytes) -> dict:
    message = email.parser.BytesParser().parsebytes(
        b'Content-Type: ' + headers['Content-Type'].encode() + b'\r\n\r\n' + raw)
    fields, data, filename = {}, b'', 'upload'
    for part in message.get_payload():
      name = part.get_param('name', header='content-disposition')
      if name == 'file':
        data = part.get_payload(decode=True)
        filename = part.get_filename() or filename
      else:
        fields[name] = part.get_payload(decode=True).decode()
    return self._store(data, fields.get('purpose', ''), filename)

  def _create(self, handler, body: dict):
    source = self.files.get(body.get('input_file_id'))
    if source is None:
      return handler._error(400, 'INVALID_ARGUMENT', 'no such input_file_id')
    lines = [json.loads(l) for l in source['data'].decode().splitlines()
             if l.strip()]
    self.lines += len(lines)
    batch = {
        'id': self._new_id('batch'), 'object': 'batch',
        'endpoint': body.get('endpoint'), 'errors': None,
        'input_file_id': body['input_file_id'],
        'completion_window': body.get('completion_window'),
        'status': 'validating', 'output_file_id': None,
        'error_file_id': None, 'created_at': int(time.time()),
        'metadata': body.get('metadata'),
        'request_counts': {'total': len(lines), 'completed': 0, 'failed': 0}}
    batch['_lines'] = lines
    batch['_created'] = time.monotonic()
    batch['_first'] = len(self.batches) == 0
    self.batches[batch['id']] = batch
    return handler._json(200, _public(batch))

  def _list(self, query: dict) -> dict:
    """GET /v1/batches: newest first, `limit` a page, from `after`."""
    newest = [self._advance(b) for b in reversed(list(self.batches.values()))]
    after = (query.get('after') or [None])[0]
    if after is not None:
      ids = [b['id'] for b in newest]
      newest = newest[ids.index(after) + 1:] if after in ids else []
    limit = int((query.get('limit') or ['20'])[0])
    page = newest[:limit]
    return {'object': 'list', 'data': page, 'has_more': len(newest) > limit,
            'first_id': page[0]['id'] if page else None,
            'last_id': page[-1]['id'] if page else None}

  def _advance(self, batch: dict) -> dict:
    """The batch as a client sees it now (statuses move with time)."""
    if batch['status'] in _DONE:
      return _public(batch)
    n = len(batch['_lines'])
    phase = self.faults.phase(time.monotonic() - batch['_created'], n,
                              batch['_first'])
    if phase == 'too_large':
      batch['errors'] = {'object': 'list', 'data': [{
          'code': 'too_many_requests', 'line': None, 'param': None,
          'message': f'The batch input file has more than '
                     f'{self.faults.max_lines_per_file} requests.'}]}
      batch['status'] = 'failed'
    elif phase == 'running':
      batch['status'] = 'in_progress'
    elif phase in ('expired', 'cancelled'):
      self._finish(batch, phase, done=n // 2)
    elif phase == 'succeeded':
      self._finish(batch, 'completed', done=n)
    return _public(batch)

  def _finish(self, batch: dict, status: str, done: int) -> None:
    """Answers the first `done` lines; the others are left unfinished."""
    out, errors = [], []
    for n, line in enumerate(batch['_lines']):
      if n >= done:
        errors.append(_line(line, None, {
            'code': 'batch_expired' if status == 'expired' else 'batch_cancelled',
            'message': f'This line was not executed: the batch {status}.'}))
        continue
      status_code, body = self._answer(line)
      (out if status_code == 200 else errors).append(
          _line(line, {'status_code': status_code, 'request_id': f'req-{n}',
                       'body': body}, None))
    counts = batch['request_counts']
    counts['completed'] = len(out)
    counts['failed'] = len(errors)
    if out:
      batch['output_file_id'] = self._store(
          _jsonl(out), 'batch_output', 'output.jsonl')['id']
    if errors:
      batch['error_file_id'] = self._store(
          _jsonl(errors), 'batch_output', 'errors.jsonl')['id']
    batch['status'] = status

  def _answer(self, line: dict):
    body = line.get('body') or {}
    url = line.get('url', '')
    prompt = self._server.prompt_of(url, body)
    if self.faults.invalid_for and self.faults.invalid_for in prompt:
      return 400, _error_body(400, 'Invalid request: the prompt is refused')
    if self._random.random() < self.faults.line_server_error:
      return 500, _error_body(500, 'The server had an error processing your request')
    status, answer = self._server.answer_line(url, body)
    if status != 200:
      return status, _error_body(status, answer['error']['message'])
    return status, answer

  def batch_list(self) -> List[dict]:
    with self._lock:
      return [_public(b) for b in self.batches.values()]

  def sent_lines(self) -> List[dict]:
    """The request lines of every batch created (its file may be gone)."""
    with self._lock:
      return [l for b in self.batches.values() for l in b['_lines']]


def _public(batch: dict) -> dict:
  return {k: v for k, v in batch.items() if not k.startswith('_')}


def _line(request: dict, response, error) -> dict:
  return {'id': f'batch_req_{request.get("custom_id")}',
          'custom_id': request.get('custom_id'), 'response': response,
          'error': error}


def _error_body(status: int, message: str) -> dict:
  return {'error': {'message': message, 'type': 'invalid_request_error'
                    if status < 500 else 'server_error', 'code': None}}


def _jsonl(lines: list) -> bytes:
  return b''.join(json.dumps(l).encode() + b'\n' for l in lines)
