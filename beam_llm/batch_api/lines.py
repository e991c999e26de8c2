"""Batch API files: request lines in, a verdict per `custom_id` out (no I/O).

A request line is `{"custom_id", "method": "POST", "url", "body"}`, the body
being exactly what the synchronous request would send. Output and error
files hold one line per request with the same `custom_id`: a `response`
(status code and body, as the synchronous API would answer) or, for lines
never run (the batch expired or was cancelled), only an `error`. Each is
judged by the policy that judges synchronous answers (remote.classify_status,
the backend's own answer parser), so a 5xx line is retried, a 4xx line is
an error row, exactly as in synchronous mode.
"""
import dataclasses
import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from beam_llm import remote


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What one line's result means: an answer, or the failure instead."""
  value: Any = None
  failure: Optional[remote.Failure] = None

  @property
  def retry(self) -> bool:
    return self.failure is not None and self.failure.retryable


def encode(custom_id: str, url: str, body: dict) -> bytes:
  return json.dumps({'custom_id': custom_id, 'method': 'POST', 'url': url,
                     'body': body}, ensure_ascii=False).encode('utf-8') + b'\n'


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


def read_results(texts: Iterable[str], parse: Callable[[dict], Any]
                 ) -> Dict[str, Verdict]:
  """Verdicts of the lines of output and error files (`texts`).

  `parse(body)` turns a 200's body into an answer, or raises
  remote.BadResponse (retried unless it says otherwise). A line that is not
  JSON or has no custom_id is skipped: its request counts as missing.
  """
  verdicts = {}
  for text in texts:
    for raw in text.splitlines():
      try:
        line = json.loads(raw)
      except ValueError:
        continue
      if not isinstance(line, dict) or not isinstance(line.get('custom_id'), str):
        continue
      verdicts[line['custom_id']] = _verdict(line, parse)
  return verdicts


def _verdict(line: dict, parse) -> Verdict:
  response = line.get('response')
  if isinstance(response, dict) and isinstance(response.get('status_code'), int):
    status, body = response['status_code'], response.get('body')
    if status == 200:
      try:
        return Verdict(value=parse(body if isinstance(body, dict) else {}))
      except remote.BadResponse as exn:
        return Verdict(failure=remote.generic_failure(exn))
    return Verdict(failure=remote.classify_status(
        status, f'Batch API line: HTTP {status}: {_message(body)}'))
  # Never run: the batch expired, was cancelled or failed before this line.
  error = line.get('error') if isinstance(line.get('error'), dict) else {}
  return Verdict(failure=remote.Failure(
      remote.SERVER_ERROR, f'Batch API line not run: {error.get("code")}: '
      f'{error.get("message")}', retryable=True))


def _message(body: Any) -> str:
  if isinstance(body, dict) and isinstance(body.get('error'), dict):
    return str(body['error'].get('message'))
  return json.dumps(body)[:500]
