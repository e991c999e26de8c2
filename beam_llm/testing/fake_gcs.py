"""Cloud Storage's JSON API for FakeLLMServer: just what the real
`google-cloud-storage` client sends to stage a Batch API file and read a
batch's results back (its `api_endpoint` pointed at the server):

- `POST /upload/storage/v1/b/B/o?uploadType=multipart` (a small object:
  a multipart/related body, its JSON metadata then its bytes);
- `POST ...?uploadType=resumable` then `PUT`s of its bytes in order, each
  with a `Content-Range` (what the client sends past 8 MB: a session, then
  its chunks; `resumable_uploads` counts them);
- `GET /download/storage/v1/b/B/o/NAME?alt=media` (an object's bytes);
- `GET /storage/v1/b/B/o?prefix=P` (objects by prefix, `pageToken`);
- `DELETE /storage/v1/b/B/o/NAME` (`deleted` lists them as gs:// URIs;
  `delete_error`, an HTTP status, fails every delete with it).

Objects live in memory (`objects`, by (bucket, name)); fake Vertex AI
batch jobs (fake_vertex_batch_api.py) read and write them here too.
"""
import base64
import email.parser
import hashlib
import json
import threading
import urllib.parse
from typing import Dict, Tuple

_PAGE = 1000


class FakeGCS:
  def __init__(self):
    self.objects: Dict[Tuple[str, str], bytes] = {}
    self.uploads = 0
    self.resumable_uploads = 0
    self._sessions: Dict[str, tuple] = {}  # upload_id -> (bucket, name, bytes)
    self.deleted: list = []
    self.delete_error = 0
    self._lock = threading.Lock()

  @staticmethod
  def owns(path: str) -> bool:
    return path.startswith(('/storage/v1/b/', '/upload/storage/v1/b/',
                            '/download/storage/v1/b/'))

  def put(self, uri: str, data: bytes) -> None:
    with self._lock:
      self.objects[split_uri(uri)] = data

  def get(self, uri: str):
    with self._lock:
      return self.objects.get(split_uri(uri))

  def names(self, uri_prefix: str) -> list:
    bucket, prefix = split_uri(uri_prefix)
    with self._lock:
      return sorted(f'gs://{b}/{n}' for b, n in self.objects
                    if b == bucket and n.startswith(prefix))

  def serve(self, handler, method: str, path: str, raw: bytes = b''):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
    parts = path.split('/')  # '', [upload|download,] storage, v1, b, B, o, ...
    if parts[1] in ('upload', 'download'):
      parts = parts[1:]
    bucket = urllib.parse.unquote(parts[4]) if len(parts) > 4 else ''
    name = urllib.parse.unquote('/'.join(parts[6:])) if len(parts) > 6 else ''
    if path.startswith('/upload/') and method == 'POST':
      if (query.get('uploadType') or [''])[0] == 'resumable':
        return self._start_session(handler, bucket, raw)
      return self._upload(handler, bucket, raw)
    if path.startswith('/upload/') and method == 'PUT':
      return self._upload_chunk(handler, (query.get('upload_id') or [''])[0], raw)
    if method == 'DELETE' and name:
      return self._delete(handler, bucket, name)
    if method == 'GET' and name:
      with self._lock:
        data = self.objects.get((bucket, name))
      if data is None:
        return handler._error(404, 'NOT_FOUND', f'No such object: {bucket}/{name}')
      if (query.get('alt') or [''])[0] == 'media':
        return handler._send(200, data, 'application/octet-stream')
      return handler._json(200, _resource(bucket, name, data))
    if method == 'GET' and bucket:
      return handler._json(200, self._list(bucket, query))
    return handler._error(404, 'NOT_FOUND', f'no {method} route {path}')

  def _delete(self, handler, bucket: str, name: str):
    if self.delete_error:
      return handler._error(self.delete_error, 'ERROR', 'cannot delete')
    with self._lock:
      if self.objects.pop((bucket, name), None) is None:
        return handler._error(404, 'NOT_FOUND', f'No such object: {bucket}/{name}')
      self.deleted.append(f'gs://{bucket}/{name}')
    return handler._send(204, b'', 'application/json')

  def _upload(self, handler, bucket: str, raw: bytes):
    message = email.parser.BytesParser().parsebytes(
        b'Content-Type: ' + handler.headers['Content-Type'].encode() +
        b'\r\n\r\n' + raw)
    meta, data = message.get_payload()
    name = json.loads(meta.get_payload())['name']
    data = data.get_payload(decode=True)
    with self._lock:
      self.objects[bucket, name] = data
      self.uploads += 1
    return handler._json(200, _resource(bucket, name, data))

  def _start_session(self, handler, bucket: str, raw: bytes):
    name = json.loads(raw)['name']
    with self._lock:
      upload_id = f'session-{len(self._sessions) + 1}'
      self._sessions[upload_id] = (bucket, name, b'')
    location = (f'http://{handler.headers["Host"]}/upload/storage/v1/b/'
                f'{urllib.parse.quote(bucket)}/o?uploadType=resumable&'
                f'upload_id={upload_id}')
    return handler._json(200, {}, {'Location': location})

  def _upload_chunk(self, handler, upload_id: str, raw: bytes):
    # `Content-Range: bytes FIRST-LAST/TOTAL` (TOTAL `*` until the last).
    span, _, total = handler.headers['Content-Range'].split()[1].partition('/')
    with self._lock:
      if upload_id not in self._sessions:
        return handler._error(404, 'NOT_FOUND', f'no upload {upload_id}')
      bucket, name, data = self._sessions[upload_id]
      if span != '*':
        first = int(span.split('-')[0])
        if first != len(data):  # Chunks come in order, none twice.
          return handler._error(400, 'INVALID', f'chunk at {first}, '
                                f'expected {len(data)}')
        data += raw
      if total == '*' or len(data) < int(total):
        self._sessions[upload_id] = (bucket, name, data)
        return handler._send(308, b'', 'text/plain',
                             {'Range': f'bytes=0-{len(data) - 1}'})
      del self._sessions[upload_id]
      self.objects[bucket, name] = data
      self.uploads += 1
      self.resumable_uploads += 1
    return handler._json(200, _resource(bucket, name, data))

  def _list(self, bucket: str, query: dict) -> dict:
    prefix = (query.get('prefix') or [''])[0]
    start = int((query.get('pageToken') or ['0'])[0])
    with self._lock:
      found = sorted((n, d) for (b, n), d in self.objects.items()
                     if b == bucket and n.startswith(prefix))
    page = {'kind': 'storage#objects',
            'items': [_resource(bucket, n, d) for n, d in found[start:start + _PAGE]]}
    if start + _PAGE < len(found):
      page['nextPageToken'] = str(start + _PAGE)
    return page


def split_uri(uri: str) -> Tuple[str, str]:
  """gs://bucket/name -> (bucket, name)."""
  bucket, _, name = uri[len('gs://'):].partition('/')
  return bucket, name


def _resource(bucket: str, name: str, data: bytes) -> dict:
  # The checksums the client validates a resumable upload against.
  import google_crc32c
  return {'kind': 'storage#object', 'bucket': bucket, 'name': name,
          'id': f'{bucket}/{name}/1', 'size': str(len(data)),
          'generation': '1', 'metageneration': '1',
          'contentType': 'application/octet-stream',
          'crc32c': base64.b64encode(
              google_crc32c.value(data).to_bytes(4, 'big')).decode(),
          'md5Hash': base64.b64encode(hashlib.md5(data).digest()).decode()}
