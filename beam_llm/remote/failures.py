"""What a failed remote call means: classified once, for every remote caller.

Generation, embeddings and vector stores all read their clients' exceptions
through the functions here, into a `Failure`:

- a transient service or network fault (429, 408, 5xx, a dropped
  connection, a timeout, a body cut off) is `retryable`: the policy
  (`caller.RemoteCaller`) retries it with backoff and, once the budget is
  spent, the caller raises `ServiceOutage` and the bundle fails;
- a request the service refuses as invalid (`invalid_request`: a 4xx, or a
  validation message whatever the status) is the row's own problem: an
  error row, never retried;
- anything else is None: a bug in our code (or an answer we did not
  expect), raised as it is.
"""
import dataclasses
import email.utils
import re
import time
from typing import Any, Optional

from beam_llm.remote import limits
from beam_llm.row_failures import ServiceOutage

# Error types of failed rows (the `error_type` field of error rows).
RATE_LIMITED = 'rate_limited'  # 429 until retries or the deadline ran out.
TIMEOUT = 'timeout'  # No answer within timeout_secs (or a 408).
SERVER_ERROR = 'server_error'  # 5xx.
CONNECTION_ERROR = 'connection_error'  # Could not connect, or dropped.
BAD_RESPONSE = 'bad_response'  # An answer we cannot use (malformed, empty).
CLIENT_ERROR = 'client_error'  # 4xx other than 408/429: the request is wrong.
DEADLINE = 'deadline_exceeded'  # deadline_secs ran out before any answer.

# The service, not the row: once the retries are spent these fail the
# bundle (ServiceOutage) instead of becoming error rows.
OUTAGE_TYPES = frozenset(
    {RATE_LIMITED, TIMEOUT, SERVER_ERROR, CONNECTION_ERROR, DEADLINE})


class RemoteUnavailable(ServiceOutage):
  """A remote service cannot be used: at load time (no key, no endpoint),
  or still failing once the retries are spent. Fails the bundle."""


@dataclasses.dataclass(frozen=True)
class Failure:
  """What one failed attempt means for the policy."""
  error_type: str
  msg: str
  retryable: bool = False
  retry_after: Optional[float] = None  # Seconds the service asked us to wait.
  status: Optional[int] = None
  # The service rejected the request as invalid (not the model refusing
  # to answer: that is a `bad_response`): the same request would be
  # rejected again (a backend may try another form of it, e.g. structured
  # output, and remember).
  invalid_request: bool = False

  @property
  def overloaded(self) -> bool:
    """Whether the service turned the request away (feeds the throttler)."""
    return self.status in (429, 503) or self.error_type == TIMEOUT

  @property
  def outage(self) -> bool:
    """Whether it is the service's state, not the row (see OUTAGE_TYPES)."""
    return self.error_type in OUTAGE_TYPES

  @property
  def signal(self) -> str:
    """What this failure says about the service's load (AdaptiveLimit)."""
    if self.status == 429 or self.retry_after is not None:
      return limits.OVERLOAD
    if self.status == 503:
      return limits.BUSY
    if self.error_type == TIMEOUT:
      return limits.TIMEOUT
    return limits.FAULT


class BadResponse(Exception):
  """Raised by a backend for an answer it cannot use (no text, bad shape).

  Retried by default: a body cut off in transit, or an empty answer from an
  overloaded server, is as transient as a 5xx. `retryable=False` for answers
  that would come back the same (e.g. the model's explicit refusal).
  """
  def __init__(self, msg: str, retryable: bool = True):
    super().__init__(msg)
    self.retryable = retryable


# Messages of a request the service refused as invalid, whatever the status
# (llama.cpp's server answers a schema it does not take with a 500 and a
# pydantic message): sending it again gets the same answer.
_VALIDATION = re.compile(
    r'validation error|Input should be|Field required|Extra inputs are not '
    r'permitted|invalid_request_error|not supported|unsupported|Unrecognized '
    r'request argument|INVALID_ARGUMENT', re.I)


def is_refusal(msg: str) -> bool:
  """Whether an error message says the request itself is invalid."""
  return bool(_VALIDATION.search(msg or ''))


def classify_status(
    status: int, msg: str, retry_after: Optional[float] = None) -> Failure:
  """The policy's reading of an HTTP status code (and its message)."""
  if status == 429:
    return Failure(RATE_LIMITED, msg, True, retry_after, status)
  if status == 408:
    return Failure(TIMEOUT, msg, True, retry_after, status)
  if status >= 500 and not is_refusal(msg):
    return Failure(SERVER_ERROR, msg, True, retry_after, status)
  return Failure(CLIENT_ERROR, msg, False, None, status, invalid_request=True)


def parse_retry_after(value: Any, now: Optional[float] = None) -> Optional[float]:
  """Seconds to wait from a Retry-After header: delay-seconds or HTTP-date.

  Fractional seconds are accepted too (some services send them). Returns None
  when there is no usable value; never a negative number.
  """
  if value is None:
    return None
  text = str(value).strip()
  if not text:
    return None
  try:
    return max(0.0, float(text))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(text)
  except (TypeError, ValueError, IndexError):
    return None
  if when is None:
    return None
  return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_from_headers(headers: Any) -> Optional[float]:
  """Retry-After (or OpenAI's retry-after-ms) from a response's headers."""
  if not headers:
    return None
  try:
    ms = headers.get('retry-after-ms')
    if ms is not None:
      return max(0.0, float(ms) / 1000)
  except (TypeError, ValueError):
    pass
  return parse_retry_after(headers.get('retry-after'))


# Exception class names (anywhere in the MRO) of the HTTP stacks the clients
# use (httpx, requests, urllib3, aiohttp, the standard library), by what
# they mean. Names, not imports: each client brings a different stack.
_TIMEOUT_NAMES = frozenset({
    'TimeoutException', 'Timeout', 'TimeoutError', 'ReadTimeoutError',
    'ConnectTimeoutError', 'timeout', 'DeadlineExceeded'})
_CONNECTION_NAMES = frozenset({
    'ConnectionError', 'TransportError', 'ProtocolError', 'NetworkError',
    'NewConnectionError', 'MaxRetryError', 'ChunkedEncodingError',
    'RemoteDisconnected', 'IncompleteRead', 'ContentDecodingError',
    'ClientConnectionError', 'ClientPayloadError'})
# An answer that did not parse (a body cut off, not JSON, the wrong shape
# for the client's own types): transient, like a dropped connection.
_BAD_BODY_NAMES = frozenset({
    'JSONDecodeError', 'DecodeError', 'ValidationError', 'ParseError'})


def generic_failure(exn: BaseException) -> Optional[Failure]:
  """Classifies exceptions that are not a client's own HTTP status errors.

  Returns None for anything that does not come from the service or the
  network: a bug (TypeError, AttributeError, ...) is raised, not turned
  into error rows.
  """
  if isinstance(exn, BadResponse):
    return Failure(BAD_RESPONSE, str(exn), retryable=exn.retryable)
  names = {c.__name__ for c in type(exn).__mro__}
  msg = f'{type(exn).__name__}: {exn}'
  if names & _TIMEOUT_NAMES:
    return Failure(TIMEOUT, msg, retryable=True)
  if names & _CONNECTION_NAMES:
    return Failure(CONNECTION_ERROR, msg, retryable=True)
  if names & _BAD_BODY_NAMES:
    return Failure(BAD_RESPONSE, msg, retryable=True)
  return None


def openai_failure(exn: BaseException, timeout_secs: float) -> Optional[Failure]:
  """The `openai` client's exceptions (generation and embeddings alike)."""
  import openai
  if isinstance(exn, openai.APITimeoutError) and not _dropped(exn):
    return Failure(TIMEOUT, f'no answer within {timeout_secs}s', retryable=True)
  if isinstance(exn, openai.APIConnectionError):
    cause = exn.__cause__
    detail = f' ({type(cause).__name__}: {cause})' if cause else ''
    return Failure(CONNECTION_ERROR, f'{exn}{detail}', retryable=True)
  if isinstance(exn, openai.APIStatusError):
    return classify_status(exn.status_code, str(exn),
                           retry_after_from_headers(exn.response.headers))
  return generic_failure(exn)


def _dropped(exn: BaseException) -> bool:
  """Whether a "timeout" was the server closing the connection: the aiohttp
  transport reports a disconnect as a connect timeout. A drop is not a
  sign of overload, as a timeout is (Failure.overloaded)."""
  root = exn
  while root.__cause__ is not None:
    root = root.__cause__
  failure = generic_failure(root) if root is not exn else None
  return failure is not None and failure.error_type == CONNECTION_ERROR


__all__ = [
    'RATE_LIMITED', 'TIMEOUT', 'SERVER_ERROR', 'CONNECTION_ERROR',
    'BAD_RESPONSE', 'CLIENT_ERROR', 'DEADLINE', 'OUTAGE_TYPES',
    'RemoteUnavailable', 'Failure', 'BadResponse', 'is_refusal',
    'classify_status', 'parse_retry_after', 'retry_after_from_headers',
    'generic_failure', 'openai_failure']
