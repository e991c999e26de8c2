"""Vertex AI batch prediction for Gemini (batchPredictionJobs) for
FakeLLMServer, reading and writing Cloud Storage objects in its FakeGCS,
with the faults of fake_batch_api.BatchFaults.

Enough of the protocol for the real `google-genai` client (`vertexai:
true`): `POST /V/projects/P/locations/L/batchPredictionJobs` (`{displayName,
model, inputConfig: {gcsSource: {uris}}, outputConfig: {gcsDestination:
{outputUriPrefix}}}`), `GET .../batchPredictionJobs` (newest first,
`pageSize`, `pageToken`, `filter` of the form `display_name="TAG"`),
`GET .../batchPredictionJobs/ID`, `POST .../batchPredictionJobs/ID:cancel`.

A job moves JOB_STATE_PENDING -> RUNNING -> SUCCEEDED (or FAILED, EXPIRED,
CANCELLED) as time passes, judged when a client looks. When it ends it
writes `OUTPUT_PREFIX/prediction-model-TIME/predictions.jsonl` (named in
`outputInfo.gcsOutputDirectory`): per line run, the request line's
`request` echoed with `response` (a generateContent answer from the
server's `reply`) and `status: ""`, or with a failure `status` (no
response): a string that carries the google.rpc.Status as JSON, the form
beam_llm/batch_api/vertex_batches.py reads (the exact text Vertex writes
is not documented; the reader also takes a bare code or a dict).
`expire_first_half`: the first job expires with half its lines written;
`cancel_first_half`: the first job is cancelled with none written.
`lines` counts the request lines of every job created (what was paid for).
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

_JOBS = re.compile(r'/v1\w*/projects/([^/]+)/locations/([^/]+)/batchPredictionJobs'
                   r'(?:/(\d+))?(?::(\w+))?')
_ENDED = ('JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED',
          'JOB_STATE_EXPIRED')
_INVALID = ('Bad Request: {"error": {"code": 400, "message": "Request contains '
            'an invalid argument.", "status": "INVALID_ARGUMENT"}}')
_INTERNAL = ('Internal error: {"error": {"code": 500, "message": "Internal '
             'error encountered.", "status": "INTERNAL"}}')


class FakeVertexBatchAPI:
  def __init__(self, server, gcs, faults: Optional[BatchFaults] = None):
    self._server = server  # The FakeLLMServer: its reply.
    self._gcs = gcs  # The FakeGCS holding inputs and outputs.
    self.faults = faults or BatchFaults()
    self.jobs: Dict[str, dict] = {}  # ID -> job
    self.lines = 0
    self.retrieves = 0
    self._ids = itertools.count(1001)
    self._random = random.Random(self.faults.seed)
    self._lock = threading.Lock()

  @staticmethod
  def owns(path: str) -> bool:
    return bool(_JOBS.fullmatch(path))

  def serve(self, handler, method: str, path: str, raw: bytes = b''):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
    project, location, job_id, verb = _JOBS.fullmatch(path).groups()
    with self._lock:
      if job_id is None and method == 'POST':
        return self._create(handler, f'projects/{project}/locations/{location}',
                            json.loads(raw or b'{}'))
      if job_id is None and method == 'GET':
        return handler._json(200, self._list(query))
      job = self.jobs.get(job_id)
      if job is not None and verb == 'cancel' and method == 'POST':
        if job['state'] not in _ENDED:
          self._finish(job, 'JOB_STATE_CANCELLED', done=0)
        return handler._json(200, {})
      if job is not None and verb is None and method == 'GET':
        self.retrieves += 1
        return handler._json(200, self._advance(job))
    return handler._error(404, 'NOT_FOUND', f'no {method} route {path}')

  def _create(self, handler, parent: str, body: dict):
    uris = ((body.get('inputConfig') or {}).get('gcsSource') or {}).get('uris')
    prefix = (((body.get('outputConfig') or {}).get('gcsDestination') or {})
              .get('outputUriPrefix'))
    data = self._gcs.get(uris[0]) if uris and len(uris) == 1 else None
    if data is None or not prefix:
      return handler._error(400, 'INVALID_ARGUMENT',
                            'one readable gcsSource uri and an outputUriPrefix')
    lines = [json.loads(l) for l in data.decode().splitlines() if l.strip()]
    self.lines += len(lines)
    job_id = str(next(self._ids))
    self.jobs[job_id] = {
        'name': f'{parent}/batchPredictionJobs/{job_id}',
        'displayName': body.get('displayName'), 'model': body.get('model'),
        'inputConfig': body['inputConfig'], 'outputConfig': body['outputConfig'],
        'state': 'JOB_STATE_PENDING', 'createTime': _now(), 'lines': lines,
        'done': 0, 'created': time.monotonic(), 'first': len(self.jobs) == 0,
        'output': None, 'error': None}
    return handler._json(200, _resource(self.jobs[job_id]))

  def _list(self, query: dict) -> dict:
    wanted = re.fullmatch(r'display_name="(.*)"', (query.get('filter') or [''])[0])
    newest = [self._advance(j) for j in reversed(list(self.jobs.values()))
              if not wanted or j['displayName'] == wanted.group(1)]
    start = int((query.get('pageToken') or ['0'])[0])
    size = int((query.get('pageSize') or ['50'])[0])
    page = {'batchPredictionJobs': newest[start:start + size]}
    if start + size < len(newest):
      page['nextPageToken'] = str(start + size)
    return page

  def _advance(self, job: dict) -> dict:
    """The job as a client sees it now (states move with time)."""
    if job['state'] in _ENDED:
      return _resource(job)
    n = len(job['lines'])
    phase = self.faults.phase(time.monotonic() - job['created'], n, job['first'])
    if phase == 'too_large':
      job['error'] = {'code': 3, 'message':
                      f'More than {self.faults.max_lines_per_file} requests.'}
      job['state'] = 'JOB_STATE_FAILED'
    elif phase == 'running':
      job['state'] = 'JOB_STATE_RUNNING'
    elif phase == 'expired':
      self._finish(job, 'JOB_STATE_EXPIRED', n // 2)
    elif phase == 'cancelled':
      self._finish(job, 'JOB_STATE_CANCELLED', done=0)
    elif phase == 'succeeded':
      self._finish(job, 'JOB_STATE_SUCCEEDED', n)
    return _resource(job)

  def _finish(self, job: dict, state: str, done: int) -> None:
    """Writes the first `done` lines' results to the output directory."""
    out = [self._answer(line) for line in job['lines'][:done]]
    if out:
      prefix = job['outputConfig']['gcsDestination']['outputUriPrefix']
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
          '%Y-%m-%dT%H:%M:%S.%fZ')
      job['output'] = f'{prefix.rstrip("/")}/prediction-model-{stamp}'
      self._gcs.put(f'{job["output"]}/predictions.jsonl', b''.join(
          json.dumps(l).encode() + b'\n' for l in out))
    job['done'] = done
    job['state'] = state

  def _answer(self, line: dict) -> dict:
    request = line.get('request') or {}
    prompt = self._server.prompt_of('', request)
    echo = {'request': request, 'processed_time': _now()}
    if self.faults.invalid_for and self.faults.invalid_for in prompt:
      return {**echo, 'status': _INVALID}
    if self._random.random() < self.faults.line_server_error:
      return {**echo, 'status': _INTERNAL}
    return {**echo, 'status': '',
            'response': self._server.answer_gemini(request, prompt)}

  def job_list(self) -> List[dict]:
    """Each job: name, display name, state, lines (total), done, input uri."""
    with self._lock:
      return [{'name': j['name'], 'displayName': j['displayName'],
               'state': j['state'], 'total': len(j['lines']), 'done': j['done'],
               'input': j['inputConfig']['gcsSource']['uris'][0]}
              for j in self.jobs.values()]

  def sent_lines(self) -> List[dict]:
    """The request lines of every job created (its file may be gone)."""
    with self._lock:
      return [l for j in self.jobs.values() for l in j['lines']]


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat().replace(
      '+00:00', 'Z')


def _resource(job: dict) -> dict:
  """A job as the API answers it (a BatchPredictionJob)."""
  total, done = len(job['lines']), job['done']
  out = {k: job[k] for k in ('name', 'displayName', 'model', 'inputConfig',
                             'outputConfig', 'state', 'createTime')}
  out['updateTime'] = _now()
  if job['state'] in _ENDED:
    out['endTime'] = out['updateTime']
    out['completionStats'] = {'successfulCount': str(done),
                              'incompleteCount': str(total - done)}
  if job['output']:
    out['outputInfo'] = {'gcsOutputDirectory': job['output']}
  if job['error']:
    out['error'] = job['error']
  return out
