"""The Gemini Developer API's Batch Mode for FakeLLMServer: files and batch
jobs, with the faults of fake_batch_api.BatchFaults.

Enough of the protocol for the real `google-genai` client:

- `POST /upload/v1beta/files` (resumable upload start: answers the upload
  URL in `x-goog-upload-url`), then `POST` chunks to that URL
  (`X-Goog-Upload-Command: upload[, finalize]`), the last answering the
  file; `GET /v1beta/files/ID:download?alt=media`; `DELETE
  /v1beta/files/ID` (`deleted` lists them; `delete_error`, an HTTP status,
  fails every delete with it);
- `POST /v1beta/models/M:batchGenerateContent` (`{batch: {displayName,
  inputConfig: {fileName}}}`), `GET /v1beta/batches` (newest first,
  `pageSize`, `pageToken`), `GET /v1beta/batches/ID`,
  `POST /v1beta/batches/ID:cancel`; a batch is an operation whose
  `metadata` holds its state and, once ended, `output.responsesFile`.

A batch moves BATCH_STATE_PENDING -> RUNNING -> SUCCEEDED (or FAILED,
EXPIRED, CANCELLED) as time passes (`validating_secs`, `in_progress_secs`),
judged when a client looks. Its result file holds a `{"key", "response"}`
line (a generateContent answer, from the server's `reply`) or a `{"key",
"error": {code, message}}` line (a google.rpc.Status: 13 INTERNAL for
`line_server_error`, 3 INVALID_ARGUMENT for `invalid_for`) per request.
`max_lines_per_file`: a larger file fails the batch. `expire_first_half`:
the first batch expires with half its lines done, and its result file holds
those (Gemini documents no results for an expired job; the client reads
whatever result file an ended job names and resubmits every line without a
result, so this covers both). `cancel_first_half`: the first batch is
cancelled, with no result file at all.

`lines` counts the lines of every batch created (what was paid for).
"""
import datetime
import itertools
import json
import random
import re
import threading
import time
import urllib.parse
from typing import Dict, List, Optional

from beam_llm.testing.fake_batch_api import BatchFaults

_UPLOAD = '/_gemini_upload/'
_ENDED = ('BATCH_STATE_SUCCEEDED', 'BATCH_STATE_FAILED',
          'BATCH_STATE_CANCELLED', 'BATCH_STATE_EXPIRED')
_TYPE = 'type.googleapis.com/google.ai.generativelanguage.v1main.'


class FakeGeminiBatchAPI:
  def __init__(self, server, faults: Optional[BatchFaults] = None):
    self._server = server  # The FakeLLMServer: its url and reply.
    self.faults = faults or BatchFaults()
    self.files: Dict[str, dict] = {}  # 'files/ID' -> {'data', 'object'}
    self.batches: Dict[str, dict] = {}  # 'batches/ID' -> batch
    self.lines = 0
    self.retrieves = 0
    self.deleted: List[str] = []
    self.delete_error = 0
    self._uploads: Dict[str, dict] = {}
    self._ids = itertools.count(1)
    self._random = random.Random(self.faults.seed)
    self._lock = threading.Lock()

  @staticmethod
  def owns(path: str, headers) -> bool:
    # /v1/files and /v1/batches are OpenAI's too: Gemini's carry its key.
    if path.startswith(('/upload/', _UPLOAD)):
      return True
    return bool(re.match(r'/v1\w*/(files/[^/:]+(:download|$)|batches(/|$)|'
                         r'models/[^/]+:batchGenerateContent)', path)) and (
                             not path.startswith('/v1/')
                             or 'x-goog-api-key' in headers)

  def serve(self, handler, method: str, path: str, raw: bytes = b''):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
    with self._lock:
      if path.startswith('/upload/') and method == 'POST':
        return self._start_upload(handler, raw)
      if path.startswith(_UPLOAD) and method == 'POST':
        return self._upload_chunk(handler, path[len(_UPLOAD):], raw)
      m = re.fullmatch(r'/v1\w*/(files|batches)/([^/:]+)(?::(\w+))?', path)
      if path.endswith(':batchGenerateContent') and method == 'POST':
        return self._create(handler, path.split('/models/')[1].split(':')[0],
                            json.loads(raw or b'{}'))
      if re.fullmatch(r'/v1\w*/batches', path):
        return handler._json(200, self._list(query))
      if m and m.group(1) == 'files' and method == 'DELETE':
        return self._delete(handler, 'files/' + m.group(2))
      if m and m.group(1) == 'files' and m.group(3) == 'download':
        f = self.files.get('files/' + m.group(2))
        if f is not None:
          return handler._send(200, f['data'], 'application/octet-stream')
      if m and m.group(1) == 'batches' and 'batches/' + m.group(2) in self.batches:
        batch = self.batches['batches/' + m.group(2)]
        if m.group(3) == 'cancel' and method == 'POST':
          if batch['state'] not in _ENDED:
            self._finish(batch, 'BATCH_STATE_CANCELLED', done=0)
          return handler._json(200, {})
        if m.group(3) is None and method == 'GET':
          self.retrieves += 1
          return handler._json(200, self._advance(batch))
    return handler._error(404, 'NOT_FOUND', f'no {method} route {path}')

  def _delete(self, handler, name: str):
    if self.delete_error:
      return handler._error(self.delete_error, 'ERROR', 'cannot delete')
    if self.files.pop(name, None) is None:
      return handler._error(404, 'NOT_FOUND', f'File {name} not found.')
    self.deleted.append(name)
    return handler._json(200, {})

  def _new_id(self) -> str:
    return f'{next(self._ids):06d}'

  def _start_upload(self, handler, raw: bytes):
    upload_id = self._new_id()
    meta = json.loads(raw or b'{}').get('file') or {}
    self._uploads[upload_id] = {'data': b'', 'meta': meta}
    return handler._send(200, b'{}', 'application/json', {
        'x-goog-upload-url': f'{self._server.url}{_UPLOAD}{upload_id}',
        'x-goog-upload-status': 'active'})

  def _upload_chunk(self, handler, upload_id: str, raw: bytes):
    upload = self._uploads.get(upload_id)
    command = handler.headers.get('X-Goog-Upload-Command', '')
    if upload is None or int(handler.headers.get('X-Goog-Upload-Offset', -1)
                             ) != len(upload['data']):
      return handler._send(400, b'{}', 'application/json',
                           {'x-goog-upload-status': 'final'})
    upload['data'] += raw
    if 'finalize' not in command:
      return handler._send(200, b'{}', 'application/json',
                           {'x-goog-upload-status': 'active'})
    del self._uploads[upload_id]
    obj = self._store(upload['data'], upload['meta'].get('displayName'),
                      upload['meta'].get('mimeType', 'jsonl'))
    return handler._send(200, json.dumps({'file': obj}).encode(),
                         'application/json', {'x-goog-upload-status': 'final'})

  def _store(self, data: bytes, display_name, mime_type: str) -> dict:
    name = 'files/' + self._new_id()
    obj = {'name': name, 'displayName': display_name, 'mimeType': mime_type,
           'sizeBytes': str(len(data)), 'createTime': _now(),
           'state': 'ACTIVE', 'uri': f'{self._server.url}/v1beta/{name}'}
    self.files[name] = {'object': obj, 'data': data}
    return obj

  def _create(self, handler, model: str, body: dict):
    batch = body.get('batch') or {}
    source = self.files.get((batch.get('inputConfig') or {}).get('fileName'))
    if source is None:
      return handler._error(400, 'INVALID_ARGUMENT', 'no such input file')
    lines = [json.loads(l) for l in source['data'].decode().splitlines()
             if l.strip()]
    self.lines += len(lines)
    name = 'batches/' + self._new_id()
    self.batches[name] = {
        'name': name, 'model': f'models/{model}', 'state': 'BATCH_STATE_PENDING',
        'displayName': batch.get('displayName'), 'createTime': _now(),
        'inputFile': source['object']['name'], 'lines': lines, 'done': 0,
        'created': time.monotonic(), 'first': not self.batches,
        'output': None, 'error': None}
    return handler._json(200, _operation(self.batches[name]))

  def _list(self, query: dict) -> dict:
    newest = [self._advance(b) for b in reversed(list(self.batches.values()))]
    start = int((query.get('pageToken') or ['0'])[0])
    size = int((query.get('pageSize') or ['50'])[0])
    page = {'operations': newest[start:start + size]}
    if start + size < len(newest):
      page['nextPageToken'] = str(start + size)
    return page

  def _advance(self, batch: dict) -> dict:
    """The batch as a client sees it now (states move with time)."""
    if batch['state'] in _ENDED:
      return _operation(batch)
    n = len(batch['lines'])
    phase = self.faults.phase(time.monotonic() - batch['created'], n,
                              batch['first'])
    if phase == 'too_large':
      batch['error'] = {'code': 3, 'message': f'The input file has more than '
                        f'{self.faults.max_lines_per_file} requests.'}
      batch['state'] = 'BATCH_STATE_FAILED'
    elif phase == 'running':
      batch['state'] = 'BATCH_STATE_RUNNING'
    elif phase == 'expired':
      self._finish(batch, 'BATCH_STATE_EXPIRED', n // 2)
    elif phase == 'cancelled':
      self._finish(batch, 'BATCH_STATE_CANCELLED', done=0)
    elif phase == 'succeeded':
      self._finish(batch, 'BATCH_STATE_SUCCEEDED', n)
    return _operation(batch)

  def _finish(self, batch: dict, state: str, done: int) -> None:
    """Answers the first `done` lines into a result file (if any)."""
    out = [self._answer(line) for line in batch['lines'][:done]]
    if out:
      batch['output'] = self._store(
          b''.join(json.dumps(l).encode() + b'\n' for l in out),
          'batch-results', 'application/jsonl')['name']
    batch['done'] = done
    batch['state'] = state

  def _answer(self, line: dict) -> dict:
    request = line.get('request') or {}
    prompt = self._server.prompt_of('', request)
    key = {'key': line.get('key')}
    if self.faults.invalid_for and self.faults.invalid_for in prompt:
      return {**key, 'error': {'code': 3, 'message':
                               'Request contains an invalid argument.'}}
    if self._random.random() < self.faults.line_server_error:
      return {**key, 'error': {'code': 13, 'message':
                               'Internal error encountered.'}}
    return {**key, 'response': self._server.answer_gemini(request, prompt)}

  def batch_list(self) -> List[dict]:
    """Each batch: name, display name, state, lines (total) and done."""
    with self._lock:
      return [{'name': b['name'], 'displayName': b['displayName'],
               'state': b['state'], 'total': len(b['lines']),
               'done': b['done'], 'inputFile': b['inputFile']}
              for b in self.batches.values()]

  def sent_lines(self) -> List[dict]:
    """The request lines of every batch created (its file may be gone)."""
    with self._lock:
      return [l for b in self.batches.values() for l in b['lines']]


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat().replace(
      '+00:00', 'Z')


def _operation(batch: dict) -> dict:
  """A batch as the API answers it: a long-running operation."""
  total, done = len(batch['lines']), batch['done']
  meta = {'@type': _TYPE + 'GenerateContentBatch', 'model': batch['model'],
          'displayName': batch['displayName'], 'state': batch['state'],
          'createTime': batch['createTime'], 'updateTime': _now(),
          'inputConfig': {'fileName': batch['inputFile']},
          'batchStats': {'requestCount': str(total),
                         'pendingRequestCount': str(total - done)}}
  op = {'name': batch['name'], 'metadata': meta}
  if batch['state'] in _ENDED:
    meta['endTime'] = meta['updateTime']
    op['done'] = True
    if batch['output']:
      meta['output'] = {'responsesFile': batch['output']}
      op['response'] = {'@type': _TYPE + 'GenerateContentBatchOutput',
                        'responsesFile': batch['output']}
    if batch['error']:
      op['error'] = batch['error']
  return op
