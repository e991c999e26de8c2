"""Batch API files, whatever the provider: lines packed into files, and a
verdict per `custom_id` (no I/O).

A provider's client (client.BatchClient) writes each request as a line of
its own format and reads its result lines back; every result line is judged
here by the policy that judges synchronous answers (remote.classify_status,
the backend's own answer parser), so a 5xx line is retried, a 4xx line is
an error row, exactly as in synchronous mode, and a line never run (its
batch expired, was cancelled or failed) goes into a follow-up batch.
"""
import dataclasses
import json
from typing import Any, Callable, Iterable, List, Optional, Tuple

from beam_llm import remote


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What one line's result means: an answer, or the failure instead."""
  value: Any = None
  failure: Optional[remote.Failure] = None

  @property
  def retry(self) -> bool:
    return self.failure is not None and self.failure.retryable


def into_files(lines: Iterable[Tuple[str, bytes]], max_requests: int,
               max_bytes: int) -> Tuple[List[List[Tuple[str, bytes]]], List[str]]:
  """Lines packed in order into files within both limits; and the ids of
  lines that alone exceed `max_bytes` (no file can carry them)."""
  files, too_big = [], []
  current, size = [], 0
  for custom_id, data in lines:
    if len(data) > max_bytes:
      too_big.append(custom_id)
      continue
    if current and (len(current) >= max_requests or size + len(data) > max_bytes):
      files.append(current)
      current, size = [], 0
    current.append((custom_id, data))
    size += len(data)
  if current:
    files.append(current)
  return files, too_big


def json_lines(texts: Iterable[str]) -> Iterable[dict]:
  """The JSON objects of result files' lines; a line that is not one is
  skipped (its request counts as missing: run again)."""
  for text in texts:
    for raw in text.splitlines():
      try:
        line = json.loads(raw)
      except ValueError:
        continue
      if isinstance(line, dict):
        yield line


def answered(body: Any, parse: Callable[[Any], Any]) -> Verdict:
  """A line the service answered: `parse(body)` gives its answer, or raises
  remote.BadResponse (retried unless it says otherwise)."""
  try:
    return Verdict(value=parse(body))
  except remote.BadResponse as exn:
    return Verdict(failure=remote.generic_failure(exn))


def failed(status: int, message: str) -> Verdict:
  """A line that got an error status (HTTP): judged as a synchronous one."""
  return Verdict(failure=remote.classify_status(
      status, f'Batch API line: HTTP {status}: {message}'))


def not_run(code: Any, message: Any) -> Verdict:
  """A line never run (the batch expired, was cancelled or failed)."""
  return Verdict(failure=remote.Failure(
      remote.SERVER_ERROR, f'Batch API line not run: {code}: {message}',
      retryable=True))
