"""The Gemini Developer API's Batch Mode (client.BatchClient) on
`google-genai`: a JSONL file of `{"key": custom_id, "request": <the
GenerateContentRequest the synchronous call sends, REST form>}` lines,
uploaded (`files.upload`), one batch per file and model
(`batches.create(model, src=<file name>, config={display_name: tag})`),
polled (`batches.get`); a succeeded batch names a result file
(`dest.file_name`, `files.download`) of `{"key", "response"}` or
`{"key", "error": <google.rpc.Status>}` lines. Gemini on Vertex AI
(`vertexai: true`) runs batch prediction jobs on Cloud Storage files
instead: vertex_batches.py, which shares this client's calls.

Like the synchronous backend, the sync client runs on a thread
(remote.in_thread), each call under the remote-call policy.
"""
import datetime
import io
import json
import threading
from typing import Dict, List, Optional

from beam_llm import remote
from beam_llm.batch_api import lines
from beam_llm.batch_api.client import BatchClient
from beam_llm.batch_api.lines import Verdict

# Gemini's job states (google-genai's JobState, Vertex AI's too) ->
# client.py's statuses; the others (QUEUED, CANCELLING, PAUSED, UPDATING)
# are open. A partly succeeded job has ended: its lines without a result
# go in a follow-up like any unrun line.
_STATES = {
    'JOB_STATE_PENDING': 'queued', 'JOB_STATE_RUNNING': 'in_progress',
    'JOB_STATE_SUCCEEDED': 'completed', 'JOB_STATE_FAILED': 'failed',
    'JOB_STATE_CANCELLED': 'cancelled', 'JOB_STATE_EXPIRED': 'expired',
    'JOB_STATE_PARTIALLY_SUCCEEDED': 'completed'}
# google.rpc.Code -> its HTTP status (google/rpc/code.proto), to judge an
# error line as a synchronous error: 5xx-ish retried, 4xx-ish an error row.
_RPC_HTTP = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
             9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500,
             16: 401}
_PAGES = 50  # Pages of 100 batches `find` looks through at most.
_CONVERTER = {}  # vertexai -> client
_CONVERTER_LOCK = threading.Lock()


def rest_request(request: dict, vertexai: bool = False) -> tuple:
  """(the model's resource name, the REST GenerateContentRequest) of a
  built request (GeminiHandler.build_request): what
  `models.generate_content` sends, converted by google-genai's own code
  (the Gemini Developer API's form: `models/M`; Vertex AI's:
  `publishers/google/models/M`)."""
  from google.genai import _common
  from google.genai import models
  from google.genai import types
  params = types._GenerateContentParameters(  # pylint: disable=protected-access
      model=request['model'], contents=request['contents'],
      config=request['config'])
  convert = (models._GenerateContentParameters_to_vertex if vertexai  # pylint: disable=protected-access
             else models._GenerateContentParameters_to_mldev)  # pylint: disable=protected-access
  body = convert(_converter(vertexai), params, None, params)
  url = body.pop('_url')
  for key in ('_query', 'config'):
    body.pop(key, None)
  body = _common.encode_unserializable_types(_common.convert_to_dict(body))
  return url['model'], body


def _converter(vertexai: bool):
  """A client used only for converting requests (it makes no calls;
  conversion needs one to know the API)."""
  with _CONVERTER_LOCK:
    if vertexai not in _CONVERTER:
      from google.genai import _api_client
      if vertexai:
        from google.auth.credentials import AnonymousCredentials
        _CONVERTER[vertexai] = _api_client.BaseApiClient(
            vertexai=True, project='unused', location='us-central1',
            credentials=AnonymousCredentials())
      else:
        _CONVERTER[vertexai] = _api_client.BaseApiClient(api_key='unused')
    return _CONVERTER[vertexai]


def encode(custom_id: str, model: str, body: dict) -> bytes:
  return json.dumps({'key': custom_id, 'request': body},
                    ensure_ascii=False).encode('utf-8') + b'\n'


def read_results(texts, parse) -> Dict[str, Verdict]:
  """Verdicts of a result file's lines; `parse` turns a `response` (a
  GenerateContentResponse, REST form) into an answer."""
  verdicts = {}
  for line in lines.json_lines(texts):
    key = line.get('key')
    if not isinstance(key, str):
      continue
    error = line.get('error') or line.get('status')
    if isinstance(line.get('response'), dict):
      verdicts[key] = lines.answered(line['response'], parse)
    elif isinstance(error, dict):
      code = error.get('code')
      status = code if isinstance(code, int) and code >= 100 else (
          _RPC_HTTP.get(code, 500))
      verdicts[key] = lines.failed(status, str(error.get('message')))
  return verdicts


class GeminiBatchClient(BatchClient):
  """Gemini's files and batches, through the process's `genai.Client`."""
  limits = {
      'batch_max_requests': (50_000, "beam-llm's choice, as for OpenAI: it "
                             'bounds the rows a worker holds per file'),
      'batch_max_bytes': (2_000_000_000, "Gemini's limit for an input "
                          'file, 2 GB')}
  missing_hint = ('; the server may not offer the Batch API (files, '
                  ':batchGenerateContent, batches): leave batch_api out for it')
  encode = staticmethod(encode)

  def __init__(self, handler, loaded):
    super().__init__(handler, loaded)
    self._genai = loaded.client  # The process's `genai.Client`.

  def read_results(self, texts: List[str], endpoint: str) -> Dict[str, Verdict]:
    return read_results(texts, self._handler.read_rest_answer)

  def _sync(self, what: str, method, gone_ok: bool = False,
            min_secs: float = 0.0, **kwargs):
    """`method(**kwargs, config={**config, http_options: {timeout}})` on a
    thread, under the policy. A callable keyword value is called for each
    attempt (an upload's stream, fresh every time)."""
    config = kwargs.pop('config', {})

    def send(timeout):
      ms = int(max(timeout, min_secs) * 1000)
      return remote.in_thread(method, **{k: v() if callable(v) else v
                                         for k, v in kwargs.items()},
                              config={**config, 'http_options': {'timeout': ms}})
    return self._call(what, send, gone_ok)

  def upload(self, data: bytes, endpoint: str, tag: str) -> str:
    # A big file takes longer than one answer: at least a second per MB. A
    # fresh stream for every attempt.
    uploaded = self._sync(
        'upload', self._genai.files.upload, min_secs=len(data) / 1e6,
        file=lambda: io.BytesIO(data),
        config={'mime_type': 'jsonl', 'display_name': tag})
    return uploaded.name

  def create(self, input_file: str, endpoint: str, tag: str) -> dict:
    batch = self._sync('create', self._genai.batches.create, model=endpoint,
                       src=input_file, config={'display_name': tag})
    return self._view(batch)

  def delete(self, file_id: str) -> None:
    self._sync('delete', self._genai.files.delete, gone_ok=True, name=file_id)

  def find(self, tag: str, since: float) -> Optional[dict]:
    """By display name; every page (the list's order is not documented)."""
    token = None
    for _ in range(_PAGES):
      config = {'page_size': 100, **self._list_filter(tag),
                **({'page_token': token} if token else {})}
      pager = self._sync('list', self._genai.batches.list, config=config)
      for batch in pager.page:
        if batch.display_name == tag and _created(batch) >= since:
          return self._view(batch)
      token = pager.config.get('page_token')
      if not token or not pager.page:
        return None
    return None

  def _list_filter(self, tag: str) -> dict:
    return {}  # The Gemini Developer API's list takes no filter.

  def retrieve(self, batch_id: str) -> dict:
    batch = self._sync('retrieve', self._genai.batches.get, gone_ok=True,
                       name=batch_id)
    return ({'id': batch_id, 'status': 'gone'} if batch is None
            else self._view(batch))

  def content(self, file_id: str) -> str:
    data = self._sync('download', self._genai.files.download, gone_ok=True,
                      file=file_id)
    return '' if data is None else data.decode('utf-8')

  def cancel(self, batch_id: str) -> None:
    self._sync('cancel', self._genai.batches.cancel, name=batch_id)

  def _view(self, batch) -> dict:
    dest, src = batch.dest, batch.src
    return batch_view(batch, [dest.file_name] if dest and dest.file_name else [],
                      src.file_name if src else None)


def _created(batch) -> float:
  when = batch.create_time
  if isinstance(when, datetime.datetime):
    return when.timestamp()
  return float('inf')  # Not said: it may be the one.


def batch_view(batch, result_files: List[str],
               input_file: Optional[str] = None) -> dict:
  """A google-genai BatchJob in client.py's vocabulary."""
  state = getattr(batch.state, 'value', batch.state)
  error = getattr(batch, 'error', None)
  return {'id': batch.name, 'status': _STATES.get(state, str(state).lower()),
          'result_files': result_files, 'done': None,
          'errors': [str(error.message)] if error and error.message else [],
          'input_file': input_file}
