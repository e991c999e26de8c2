"""Gemini on Vertex AI (`vertexai: true`): batch prediction jobs
(client.BatchClient). Each request file is written to Cloud Storage under
`batch_staging_uri` (`google-cloud-storage`), then a job is created on it
with google-genai's `batches.create(model, src=gs://.../requests.jsonl,
config={dest: gs://.../output, display_name: tag})`, polled and found again
by display name as gemini_batches.py does (this client is that one with
Cloud Storage for files).

A line is `{"request": <the GenerateContentRequest the synchronous call
sends, Vertex AI's REST form>}`. Vertex AI documents no per-line key, so
the row's custom_id travels in the request itself, as request `labels`
(`beam_llm_id_0`, `beam_llm_id_1`: a label value holds at most 63
characters); the output echoes each line's `request`, so its labels name
the row. An ended job's output directory (`outputInfo.gcsOutputDirectory`,
else the `dest` prefix) holds `predictions*.jsonl` files of `{"request",
"response", "status"}` lines: an empty `status` with a `response` is an
answer; any other `status` is judged as a synchronous error of that code
(5xx-ish retried, 4xx-ish an error row); a line missing there was never run.
Every `.jsonl` there is read, so `errors_N.jsonl` files of batch
prediction's generic `{instance, error}` form count too.
"""
import json
import re
from typing import Dict, List, Optional, Tuple

from beam_llm import remote
from beam_llm.batch_api import lines
from beam_llm.batch_api.gemini_batches import _RPC_HTTP
from beam_llm.batch_api.gemini_batches import GeminiBatchClient
from beam_llm.batch_api.gemini_batches import batch_view
from beam_llm.batch_api.lines import Verdict

_LABEL = 'beam_llm_id_'
_LABEL_CHARS = 60  # A label value holds at most 63 characters.
# google.rpc.Code names -> their HTTP status (google/rpc/code.proto).
_RPC_NAMES = {
    'CANCELLED': 499, 'UNKNOWN': 500, 'INVALID_ARGUMENT': 400,
    'DEADLINE_EXCEEDED': 504, 'NOT_FOUND': 404, 'ALREADY_EXISTS': 409,
    'PERMISSION_DENIED': 403, 'RESOURCE_EXHAUSTED': 429,
    'FAILED_PRECONDITION': 400, 'ABORTED': 409, 'OUT_OF_RANGE': 400,
    'UNIMPLEMENTED': 501, 'INTERNAL': 500, 'UNAVAILABLE': 503,
    'DATA_LOSS': 500, 'UNAUTHENTICATED': 401}


def staging_parts(uri: str) -> Tuple[str, str]:
  """gs://bucket/some/prefix -> ('bucket', 'some/prefix')."""
  bucket, _, prefix = uri[len('gs://'):].partition('/')
  return bucket, prefix.strip('/')


def encode(custom_id: str, model: str, body: dict) -> bytes:
  labels = dict(body.get('labels') or {})
  for n in range(0, len(custom_id), _LABEL_CHARS):
    labels[f'{_LABEL}{n // _LABEL_CHARS}'] = custom_id[n:n + _LABEL_CHARS]
  return json.dumps({'request': {**body, 'labels': labels}},
                    ensure_ascii=False).encode('utf-8') + b'\n'


def _custom_id(request) -> Optional[str]:
  labels = request.get('labels') if isinstance(request, dict) else None
  if not isinstance(labels, dict):
    return None
  parts = sorted((int(k[len(_LABEL):]), v) for k, v in labels.items()
                 if re.fullmatch(_LABEL + r'\d+', str(k)) and isinstance(v, str))
  return ''.join(v for _, v in parts) or None


def _status(status) -> Tuple[int, str]:
  """(HTTP status, message) of a failed line's `status`: a google.rpc.Status
  as a dict, as JSON inside a string, or a code or code name in text.
  Unreadable, it counts as a 500 (retried, never an error row)."""
  if isinstance(status, str):
    found = re.search(r'\{.*\}', status)
    try:
      inner = json.loads(found.group(0)) if found else None
    except ValueError:
      inner = None
    if isinstance(inner, dict):
      status = {**inner.get('error', inner), 'message': status}
  if isinstance(status, dict):
    code = status.get('code')
    if isinstance(code, int):
      return (code if code >= 100 else _RPC_HTTP.get(code, 500),
              str(status.get('message')))
    status = str(status.get('status') or status.get('message') or status)
  text = str(status or 'no response and no status')
  for name, http in _RPC_NAMES.items():
    if name in text:
      return http, text
  found = re.match(r'\s*([1-5]\d\d)\b', text)
  return (int(found.group(1)) if found else 500), text


def read_results(texts, parse) -> Dict[str, Verdict]:
  """Verdicts of an output directory's lines; `parse` turns a `response`
  (a GenerateContentResponse, Vertex AI's REST form) into an answer."""
  verdicts, unlabelled = {}, 0
  for line in lines.json_lines(texts):
    # Batch prediction's generic form for a failed instance (an errors_N
    # file: `{instance, error}`) is read too, in case Gemini's uses it.
    instance = line.get('instance')
    request = line.get('request') or (
        instance.get('request') if isinstance(instance, dict) else None)
    key = _custom_id(request)
    if key is None:
      unlabelled += 1
      continue
    status = line.get('status') or line.get('error')
    if isinstance(line.get('response'), dict) and not status:
      verdicts[key] = lines.answered(line['response'], parse)
    else:
      verdicts[key] = lines.failed(*_status(status))
  if unlabelled and not verdicts:
    # Rows are matched by the labels each request carries (see the module);
    # results without them would be resubmitted and finally paid for at
    # the synchronous price. A format this code does not know: fail loudly.
    raise RuntimeError(
        f'Vertex AI batch prediction output: {unlabelled} result lines carry '
        f'no {_LABEL}* request labels, so no row can be matched to its '
        'result; the output format differs from what beam-llm reads '
        '(please report it). Rerunning with the same cache_dir resumes the '
        'job once fixed')
  return verdicts


class VertexBatchClient(GeminiBatchClient):
  """Vertex AI's batch prediction jobs through the process's vertexai
  `genai.Client`; their files through a Cloud Storage client."""
  limits = {
      'batch_max_requests': (50_000, "beam-llm's choice, as for the Gemini "
                             'API: it bounds the rows a worker holds per file'),
      'batch_max_bytes': (1_000_000_000, "beam-llm's choice, 1 GB: bounds "
                          'the file a worker uploads in one request')}
  missing_hint = ('; the server may not offer Vertex AI batch prediction '
                  '(batchPredictionJobs) or Cloud Storage: leave batch_api '
                  'out for it')
  encode = staticmethod(encode)

  def __init__(self, handler, loaded):
    super().__init__(handler, loaded)
    self._bucket_name, self._prefix = staging_parts(handler.batch_staging_uri)
    self._bucket = handler.connect_storage().bucket(self._bucket_name)

  def read_results(self, texts: List[str], endpoint: str) -> Dict[str, Verdict]:
    return read_results(texts, self._handler.read_rest_answer)

  def _folder(self, tag: str) -> str:
    return f'{self._prefix}/{tag}' if self._prefix else tag

  def upload(self, data: bytes, endpoint: str, tag: str) -> str:
    blob = self._bucket.blob(f'{self._folder(tag)}/requests.jsonl')
    # At least a second per MB, as for the other providers' uploads.
    self._storage('upload', lambda timeout: blob.upload_from_string(
        data, content_type='application/jsonl', retry=None,
        timeout=max(timeout, len(data) / 1e6)))
    return f'gs://{self._bucket_name}/{blob.name}'

  def create(self, input_file: str, endpoint: str, tag: str) -> dict:
    batch = self._sync(
        'create', self._genai.batches.create, model=endpoint, src=input_file,
        config={'display_name': tag, 'dest':
                f'gs://{self._bucket_name}/{self._folder(tag)}/output'})
    return self._view(batch)

  def delete(self, file_id: str) -> None:
    """A staged object, or an output directory (`content`'s file ids):
    every object under it."""
    bucket, name = self._bucket_for(file_id)
    names = self._storage('list', lambda timeout: [
        b.name for b in bucket.client.list_blobs(
            bucket, prefix=name + '/', retry=None, timeout=timeout)])
    for each in names or [name]:
      self._storage('delete', lambda timeout, each=each: bucket.blob(
          each).delete(retry=None, timeout=timeout), gone_ok=True)

  def _bucket_for(self, uri: str):
    name, path = staging_parts(uri)
    return (self._bucket if name == self._bucket_name
            else self._bucket.client.bucket(name)), path

  def _list_filter(self, tag: str) -> dict:
    return {'filter': f'display_name="{tag}"'}

  def content(self, file_id: str) -> str:
    """The text of every JSONL file in an output directory (`gs://...`)."""
    bucket, prefix = self._bucket_for(file_id)
    names = self._storage('list', lambda timeout: [
        b.name for b in bucket.client.list_blobs(
            bucket, prefix=prefix + '/', retry=None, timeout=timeout)])
    texts = []
    for name in sorted(names):
      if name.endswith('.jsonl'):
        data = self._storage('download', lambda timeout, name=name: (
            bucket.blob(name).download_as_bytes(retry=None, timeout=timeout)),
                             gone_ok=True)
        texts.append('' if data is None else data.decode('utf-8'))
    return '\n'.join(texts)

  def _view(self, batch) -> dict:
    info, dest, src = batch.output_info, batch.dest, batch.src
    where = (info.gcs_output_directory if info and info.gcs_output_directory
             else dest.gcs_uri if dest else None)
    return batch_view(batch, [where.rstrip('/')] if where else [],
                      src.gcs_uri[0] if src and src.gcs_uri else None)

  def _storage(self, what: str, call, gone_ok: bool = False):
    """A blocking Cloud Storage call on a thread, under the policy (its
    client's own retries off)."""
    return self._call(what, lambda timeout: remote.in_thread(call, timeout),
                      gone_ok)

  def _classify(self, exn):
    from google.api_core import exceptions
    if isinstance(exn, exceptions.GoogleAPICallError) and exn.code:
      return remote.classify_status(int(exn.code), str(exn))
    return super()._classify(exn)
