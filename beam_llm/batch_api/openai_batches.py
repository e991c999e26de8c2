"""OpenAI's Batch API (client.BatchClient) on the official `openai` client:
files of `{"custom_id", "method": "POST", "url", "body"}` lines, the body
being exactly what the synchronous request would send; output and error
files of `{"custom_id", "response": {"status_code", "body"}, "error"}`
lines (`error` alone for lines never run: the batch expired or was
cancelled)."""
import json
from typing import Any, Dict, List, Optional

from beam_llm.batch_api import lines
from beam_llm.batch_api.client import BatchClient
from beam_llm.batch_api.lines import Verdict

# The provider's window for a batch: OpenAI offers 24 h only.
COMPLETION_WINDOW = '24h'


def encode(custom_id: str, url: str, body: dict) -> bytes:
  return json.dumps({'custom_id': custom_id, 'method': 'POST', 'url': url,
                     'body': body}, ensure_ascii=False).encode('utf-8') + b'\n'


def read_results(texts, parse) -> Dict[str, Verdict]:
  """Verdicts of the lines of output and error files (`texts`); `parse`
  turns a 200's body into an answer (lines.answered). A line without a
  custom_id is skipped: its request counts as missing."""
  verdicts = {}
  for line in lines.json_lines(texts):
    if isinstance(line.get('custom_id'), str):
      verdicts[line['custom_id']] = _verdict(line, parse)
  return verdicts


def _verdict(line: dict, parse) -> Verdict:
  response = line.get('response')
  if isinstance(response, dict) and isinstance(response.get('status_code'), int):
    status, body = response['status_code'], response.get('body')
    if status == 200:
      return lines.answered(body if isinstance(body, dict) else {}, parse)
    return lines.failed(status, _message(body))
  error = line.get('error') if isinstance(line.get('error'), dict) else {}
  return lines.not_run(error.get('code'), error.get('message'))


def _message(body: Any) -> str:
  if isinstance(body, dict) and isinstance(body.get('error'), dict):
    return str(body['error'].get('message'))
  return json.dumps(body)[:500]


class _Body:
  """A parsed body where the backend's answer parser expects a response."""
  def __init__(self, body: dict):
    self._body = body

  def json(self):
    return self._body


class OpenAIBatchClient(BatchClient):
  """OpenAI's files and batches, through the process's `openai.AsyncOpenAI`."""
  limits = {'batch_max_requests': (50_000, "OpenAI's limit"),
            'batch_max_bytes': (200_000_000, "OpenAI's limit, 200 MB")}
  missing_hint = ('; the server may not offer the Batch API (/v1/files, '
                  '/v1/batches): leave batch_api out for it')
  encode = staticmethod(encode)

  def __init__(self, handler, loaded):
    super().__init__(handler, loaded)
    self._openai = loaded.client.openai

  def read_results(self, texts: List[str], endpoint: str) -> Dict[str, Verdict]:
    chat = endpoint.endswith('/chat/completions')
    return read_results(
        texts, lambda body: self._handler.read_answer(_Body(body), chat))

  def upload(self, data: bytes, endpoint: str, tag: str) -> str:
    # A file of up to 200 MB may take longer than one answer: at least a
    # second per MB (the row deadline still bounds the whole upload).
    uploaded = self._call('upload', lambda timeout: self._openai.files.create(
        file=(f'beam-llm-batch-{tag}.jsonl', data, 'application/jsonl'),
        purpose='batch', timeout=max(timeout, len(data) / 1e6)))
    return uploaded.id

  def create(self, input_file: str, endpoint: str, tag: str) -> dict:
    batch = self._call('create', lambda timeout: self._openai.batches.create(
        input_file_id=input_file, endpoint=endpoint,
        completion_window=COMPLETION_WINDOW, metadata={'beam_llm': tag},
        timeout=timeout))
    return _batch(batch)

  def delete(self, file_id: str) -> None:
    self._call('delete', lambda timeout: self._openai.files.delete(
        file_id, timeout=timeout), gone_ok=True)

  def find(self, tag: str, since: float) -> Optional[dict]:
    """By metadata `{beam_llm: tag}`, newest first, back to `since`."""
    after = None
    while True:
      page = self._call('list', lambda timeout, after=after: (
          self._openai.batches.list(limit=100, after=after, timeout=timeout)
          if after else self._openai.batches.list(limit=100, timeout=timeout)))
      for batch in page.data:
        if (batch.metadata or {}).get('beam_llm') == tag:
          return _batch(batch)
        if batch.created_at < since:
          return None
      if not page.data or not page.has_more:
        return None
      after = page.data[-1].id

  def retrieve(self, batch_id: str) -> dict:
    batch = self._call('retrieve', lambda timeout: self._openai.batches.retrieve(
        batch_id, timeout=timeout), gone_ok=True)
    return {'id': batch_id, 'status': 'gone'} if batch is None else _batch(batch)

  def content(self, file_id: str) -> str:
    answer = self._call('download', lambda timeout: self._openai.files.content(
        file_id, timeout=timeout), gone_ok=True)
    return '' if answer is None else answer.text

  def cancel(self, batch_id: str) -> dict:
    return _batch(self._call('cancel', lambda timeout: self._openai.batches.cancel(
        batch_id, timeout=timeout)))


def _batch(batch) -> dict:
  """An openai Batch in the client.py vocabulary (OpenAI's statuses are it)."""
  errors = (batch.errors.data if batch.errors else None) or []
  return {'id': batch.id, 'status': batch.status,
          'result_files': [f for f in (batch.output_file_id, batch.error_file_id)
                           if f],
          'done': batch.request_counts.completed if batch.request_counts else None,
          'errors': [str(e.message) for e in errors],
          'input_file': batch.input_file_id}
