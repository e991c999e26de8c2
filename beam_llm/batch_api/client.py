"""The provider interface: one Batch API's line format, files and batches,
each call through the remote-call policy.

Upload, create, retrieve and download are requests like any other: retried
with backoff under the backend's RemotePolicy (beam_llm.remote), and once
the retries are spent the bundle fails (RemoteUnavailable): an outage is
never a row's fault, and Beam retries the bundle, which resumes the batches
already submitted (beam_llm/batch_api/store.py) instead of paying again.
Messages pass the redactor: no API key in logs, errors or state files.

A batch is handed to rounds.py as a dict in one vocabulary whatever the
provider: `id`; `status`, open (any other) or one of store.FINAL
(`completed`, `failed`, `expired`, `cancelled`, `gone`: the provider no
longer knows it); `result_files` (ids of the files that hold its result
lines, once it has ended); `done` (lines answered, if the provider says);
`errors` (messages about the batch as a whole); `input_file` (the id of
its request file, if the provider says).
"""
from typing import Dict, List, Optional

from beam_llm import remote
from beam_llm.batch_api.lines import Verdict
from beam_llm.remote import RemoteUnavailable


class BatchClient:
  """Batch API calls of one backend in one worker process. A provider
  subclasses it; `limits` and `encode` are read before any client exists
  (option defaults, file sizes)."""
  # Option -> (default, why): the provider's file limits (BatchOptions).
  limits: Dict[str, tuple] = {}
  # Said when a call answers 404/405: the server has no such Batch API.
  missing_hint = ''

  def __init__(self, handler, loaded):
    self._handler = handler
    self._caller = loaded.caller
    self._redactor = loaded.redactor
    self.requests = 0  # HTTP attempts, retries included (metrics).

  @staticmethod
  def encode(custom_id: str, endpoint: str, body: dict) -> bytes:
    """One request line of a file (endpoint and body from the backend's
    `batch_line`)."""
    raise NotImplementedError

  def read_results(self, texts: List[str], endpoint: str
                   ) -> Dict[str, Verdict]:
    """Verdicts, by custom_id, of the lines of an ended batch's result
    files (`texts`); a line missing there was never run."""
    raise NotImplementedError

  def upload(self, data: bytes, endpoint: str, tag: str) -> str:
    """Uploads a request file; its id."""
    raise NotImplementedError

  def create(self, input_file: str, endpoint: str, tag: str) -> dict:
    """Starts the batch of an uploaded request file, carrying `tag`."""
    raise NotImplementedError

  def submit(self, data: bytes, endpoint: str, tag: str) -> dict:
    """Uploads a request file and starts its batch, carrying `tag`."""
    return self.create(self.upload(data, endpoint, tag), endpoint, tag)

  def delete(self, file_id: str) -> None:
    """Deletes a request or result file; one already gone is fine.
    Raises RemoteUnavailable as any call does (rounds.py only warns)."""
    raise NotImplementedError

  def find(self, tag: str, since: float) -> Optional[dict]:
    """The batch created with `tag` (by a run that crashed before keeping
    it), created at `since` (epoch seconds) or later; None if none."""
    raise NotImplementedError

  def retrieve(self, batch_id: str) -> dict:
    """The batch now; one that no longer exists (404) as `gone`."""
    raise NotImplementedError

  def content(self, file_id: str) -> str:
    """A result file's text; '' for a file that no longer exists (its
    lines count as never run)."""
    raise NotImplementedError

  def _call(self, what: str, send, gone_ok: bool = False):
    """`send(timeout)` (an awaitable) under the policy, on the process's
    remote loop; called from a DoFn thread."""
    outcome = remote.run_blocking(self._caller.call(send, self._classify))
    self.requests += outcome.attempts
    if outcome.failure is None:
      return outcome.value
    failure = outcome.failure
    if gone_ok and failure.status == 404:
      return None  # Deleted, or the provider's retention ran out.
    hint = self.missing_hint if failure.status in (404, 405) else ''
    raise RemoteUnavailable(self._redactor.redact(
        f'{self._handler.message_prefix()}: Batch API {what} failed '
        f'({failure.error_type}): {failure.msg}{hint}'))

  def _classify(self, exn):
    return self._handler.classify(exn)
