"""The forms OpenAI-compatible servers take structured output in, and which
one an endpoint accepts, found once per worker process.

- `json_schema`: `response_format: {type: json_schema, json_schema: {name,
  schema}}` — OpenAI, vLLM, llama.cpp's llama-server, Ollama (>= 0.5).
- `json_object`: `response_format: {type: json_object, schema: {...}}` —
  llama-cpp-python's server (which answers `json_schema` with an HTTP 500
  validation error).
- `structured_outputs`: a `structured_outputs: {json: schema}` body field —
  vLLM's own form since 0.10.2.
- `guided_json`: a `guided_json` body field — vLLM's form before 0.10.2.
  Later releases drop the field without an error (0.32 only logs a warning
  on the server), so it is tried last: a server that took it may not have
  constrained anything.
- `none`: no constraint; the schema is left to ParseJSON's validation.

With `structured_output: auto` the first form is tried; when the server
refuses a form as invalid (a validation error, whatever its status code),
the next is used, and remembered for every later request of the process.
Until a form has been accepted once, one request at a time tries it and the
others wait for its verdict: against llama-cpp-python's server, a first wave
of concurrent requests all sent as `json_schema` cost one refusal per row
(12 of 12 rows, scripts/check_llama_cpp_server.py), instead of one.
"""
import asyncio
import logging
import re
import time
from typing import Any, Mapping, Optional, Tuple

_LOG = logging.getLogger('beam_llm.GenerateText')

FORMS = ('json_schema', 'json_object', 'structured_outputs', 'guided_json',
         'none')


# A refusal about the request's form, not its credentials or its route.
_ABOUT_FORM = re.compile(r'response_format|json_schema|json_object|schema|'
                         r'guided|Input should be|validation', re.I)


def is_schema_refusal(failure) -> bool:
  """Whether a failed request was refused for the form of its output."""
  return (failure is not None and failure.invalid_request
          and failure.status not in (401, 403, 404, 405)
          and bool(_ABOUT_FORM.search(failure.msg)))


def apply(form: str, body: dict, schema: Mapping[str, Any]) -> dict:
  """`body` with `schema` in the given form (a new dict)."""
  body = dict(body)
  if form == 'json_schema':
    body['response_format'] = {
        'type': 'json_schema',
        'json_schema': {'name': 'response', 'schema': schema}}
  elif form == 'json_object':
    body['response_format'] = {'type': 'json_object', 'schema': schema}
  elif form == 'structured_outputs':
    body['structured_outputs'] = {'json': schema}
  elif form == 'guided_json':
    body['guided_json'] = schema
  return body


class FormChoice:
  """The form in use for one endpoint in this process (used from the
  process's remote event loop only: no lock)."""
  def __init__(self, chosen: str, describe: str, redactor):
    self._auto = chosen == 'auto'
    self._redactor = redactor
    self._form = FORMS[0] if self._auto else chosen
    self._describe = describe
    # Until a form is accepted (`auto` only), one request probes at a time;
    # the others wait for its verdict.
    self._settled = not self._auto
    self._probing = False
    self._verdict = None  # An asyncio.Event, set when a probe ends.

  @property
  def form(self) -> str:
    return self._form

  async def begin(self, wait_secs: float) -> Tuple[str, bool]:
    """(form to send, whether this request is the probe).

    While no form has been accepted yet, the first caller probes and the
    others wait for its verdict, at most `wait_secs` (then they go ahead
    with the form of the moment). A probe must call `end_probe` when done.
    """
    deadline = time.monotonic() + wait_secs
    while not self._settled and self._probing:
      left = deadline - time.monotonic()
      if left <= 0:
        return self._form, False
      try:
        await asyncio.wait_for(self._verdict.wait(), left)
      except asyncio.TimeoutError:
        pass
    if self._settled:
      return self._form, False
    self._probing = True
    self._verdict = asyncio.Event()
    return self._form, True

  def accepted(self, form: str) -> None:
    """The server answered a request in `form`: it is the form from now."""
    if self._form == form:
      self._settled = True

  def end_probe(self) -> None:
    """The probe is over (answered, refused for good, or failed in transit:
    then another waiting request probes)."""
    self._probing = False
    self._verdict.set()

  def refused(self, form: str, msg: str) -> Optional[str]:
    """The form to try after the server refused `form`; None if none is left
    (or the form was chosen explicitly: then the refusal is the answer)."""
    if not self._auto or form == 'none':
      return None
    if self._form == form:  # Not moved on already by another request.
      self._form = FORMS[FORMS.index(form) + 1]
      self._settled = self._form == 'none'
      _LOG.warning(
          '%s: the server refused structured output as %s '
          '(%s); using %s from now on (set structured_output to choose)',
          self._describe, form, self._redactor.redact(msg)[:300], self._form)
    return self._form
