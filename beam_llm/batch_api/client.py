"""The provider's files and batches, each call through the remote-call policy.

Upload, create, retrieve and download are requests like any other: retried
with backoff under the backend's RemotePolicy (beam_llm.remote), and once
the retries are spent the bundle fails (RemoteUnavailable): an outage is
never a row's fault, and Beam retries the bundle, which resumes the batches
already submitted (beam_llm/batch_api/store.py) instead of paying again.
Messages pass the redactor: no API key in logs, errors or state files.
"""
from typing import Optional

from beam_llm import remote
from beam_llm.remote import RemoteUnavailable

_OWNER = 'GenerateText'
# The provider's window for a batch: OpenAI offers 24 h only.
COMPLETION_WINDOW = '24h'


class BatchClient:
  """Batch API calls of one backend in one worker process."""
  def __init__(self, handler, loaded):
    self._handler = handler
    self._openai = loaded.client.openai  # The process's `openai.AsyncOpenAI`.
    self._caller = loaded.caller
    self._redactor = loaded.redactor
    self.requests = 0  # HTTP attempts, retries included (metrics).

  def _call(self, what: str, send, gone_ok: bool = False):
    """`send(timeout)` (an awaitable of the async client) under the
    policy, on the process's remote loop; called from a DoFn thread."""
    outcome = remote.run_blocking(self._caller.call(send, self._classify))
    self.requests += outcome.attempts
    if outcome.failure is None:
      return outcome.value
    failure = outcome.failure
    if gone_ok and failure.status == 404:
      return None  # Deleted, or the provider's retention ran out.
    hint = ''
    if failure.status in (404, 405):
      hint = ('; the server may not offer the Batch API (/v1/files, '
              '/v1/batches): leave batch_api out for it')
    raise RemoteUnavailable(self._redactor.redact(
        f'{_OWNER} [{self._handler.describe()}]: Batch API {what} failed '
        f'({failure.error_type}): {failure.msg}{hint}'))

  def _classify(self, exn):
    return self._handler.classify(exn)

  def submit(self, data: bytes, endpoint: str, tag: str) -> dict:
    """Uploads a request file and starts its batch; the batch as a dict."""
    # A file of up to 200 MB may take longer than one answer: at least a
    # second per MB (the row deadline still bounds the whole upload).
    uploaded = self._call('upload', lambda timeout: self._openai.files.create(
        file=('beam-llm-batch.jsonl', data, 'application/jsonl'),
        purpose='batch', timeout=max(timeout, len(data) / 1e6)))
    batch = self._call('create', lambda timeout: self._openai.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint,
        completion_window=COMPLETION_WINDOW, metadata={'beam_llm': tag},
        timeout=timeout))
    return batch.model_dump()

  def find(self, tag: str, since: float) -> Optional[dict]:
    """The batch created with metadata `{beam_llm: tag}`, looking back
    (newest first) to batches created at `since` (epoch seconds)."""
    after = None
    while True:
      page = self._call('list', lambda timeout, after=after: (
          self._openai.batches.list(limit=100, after=after, timeout=timeout)
          if after else self._openai.batches.list(limit=100, timeout=timeout)))
      for batch in page.data:
        if (batch.metadata or {}).get('beam_llm') == tag:
          return batch.model_dump()
        if batch.created_at < since:
          return None
      if not page.data or not page.has_more:
        return None
      after = page.data[-1].id

  def retrieve(self, batch_id: str) -> dict:
    """The batch as a dict; one that no longer exists (404) as `gone`."""
    batch = self._call('retrieve', lambda timeout: self._openai.batches.retrieve(
        batch_id, timeout=timeout), gone_ok=True)
    return {'id': batch_id, 'status': 'gone'} if batch is None else batch.model_dump()

  def content(self, file_id: str) -> str:
    """A file's text; '' for a file that no longer exists (its lines
    count as never run)."""
    answer = self._call('download', lambda timeout: self._openai.files.content(
        file_id, timeout=timeout), gone_ok=True)
    return '' if answer is None else answer.text

  def cancel(self, batch_id: str) -> dict:
    return self._call('cancel', lambda timeout: self._openai.batches.cancel(
        batch_id, timeout=timeout)).model_dump()
