"""The parse ladder: from an LLM's text to one JSON value we can trust.

Rungs, in order (the first candidate that validates wins):
  1. strict      the whole text is JSON
  2. extract     JSON inside ```fences```, <answer>-style tags, or prose
  3. repair      json_repair fixes common breakage (quotes, commas, comments)
  4. validate    jsonschema against the user's schema

What must never happen is a "repair" that turns an answer the model did not
finish into a shorter one that looks complete, so anything cut off mid-object
is rejected as `truncated` before repair sees it.
"""
import json
import re
from typing import Any, Callable, Iterator, List, Optional, Tuple

_FENCE = re.compile(r'```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)', re.S)
_TAG = re.compile(r'<([A-Za-z_][\w-]*)>(.*?)(?:</\1>|\Z)', re.S)
_OPENERS = {'{': '}', '[': ']'}


class ParseFailure(Exception):
  """No candidate survived the ladder; `rung` says where it broke."""
  def __init__(self, rung: str, reason: str):
    super().__init__(f'{rung}: {reason}')
    self.rung = rung
    self.reason = reason


def json_spans(text: str) -> Iterator[Tuple[int, Optional[int]]]:
  """Yields (start, end) of top-level {...}/[...] spans; end is None if unclosed.

  String-aware (brackets inside "..." or '...' do not count), so a summary
  containing '}' does not end the object early.
  """
  stack: List[str] = []
  start = 0
  quote = None
  escaped = False
  for i, ch in enumerate(text):
    if quote:
      if escaped:
        escaped = False
      elif ch == '\\':
        escaped = True
      elif ch == quote:
        quote = None
      continue
    if not stack:
      if ch in _OPENERS:
        stack.append(_OPENERS[ch])
        start = i
      continue
    if ch in '"\'':
      # An apostrophe inside an unquoted word ("don't") is not a string.
      if ch == '"' or not text[i - 1:i].isalnum():
        quote = ch
    elif ch in _OPENERS:
      stack.append(_OPENERS[ch])
    elif ch in '}]':
      if ch != stack[-1]:
        continue  # Mismatched closer: leave it for repair to judge.
      stack.pop()
      if not stack:
        yield start, i + 1
  if stack:
    yield start, None


def candidates(text: str) -> Iterator[Tuple[str, str]]:
  """Yields (rung, candidate text) in the order the ladder tries them."""
  yield 'strict', text
  blocks = [m.group(1) for m in _FENCE.finditer(text)]
  blocks += [m.group(2) for m in _TAG.finditer(text)]
  for source in blocks + [text]:
    for start, end in json_spans(source):
      yield 'extract', source[start:end] if end else source[start:]


def parse(
    text: Optional[str],
    validate: Callable[[Any], Optional[str]],
    repair: bool = True,
    prepare: Callable[[Any], Any] = lambda value: value) -> Tuple[Any, str]:
  """Returns (value, rung) for the first candidate that `validate` accepts.

  `prepare(value)` runs before validation (ParseJSON's lossless coercion);
  `validate(value)` returns None when valid, else a reason. Raises
  ParseFailure with the rung that failed: empty, truncated, invalid_json or
  schema.
  """
  text = text.strip() if text is not None else ''
  if not text:
    raise ParseFailure('empty', 'the model returned no text')
  # Fast path for the common case, a clean answer: text that parses whole
  # is complete, so it needs neither the cut-off check nor the ladder.
  # (A value valid as written needs no `prepare`: coercion only touches
  # what would not validate.)
  try:
    value = _DECODER.decode(text)
  except ValueError:
    pass
  else:
    if validate(value) is None:
      return value, 'strict'
  if _answer_is_cut_off(text):
    raise ParseFailure('truncated', _TRUNCATED)
  schema_reason = None
  truncated = False
  seen = set()
  for rung, candidate in candidates(text):
    candidate = candidate.strip()
    if not candidate or candidate in seen:
      continue
    seen.add(candidate)
    value, how = _load(candidate, rung, repair)
    if how == 'truncated':
      truncated = True
      continue
    if how is None:
      continue
    value = prepare(value)
    reason = validate(value)
    if reason is None:
      return value, how
    schema_reason = schema_reason or reason
  if schema_reason:
    raise ParseFailure('schema', schema_reason)
  if truncated:
    raise ParseFailure('truncated', _TRUNCATED)
  raise ParseFailure('invalid_json', 'no JSON value found in the text')


_DECODER = json.JSONDecoder(strict=False)  # json.loads(strict=False) builds one per call.
_TRUNCATED = ('the JSON was cut off before it was complete '
              '(raise max_new_tokens?)')
_LEADING_WRAPPER = re.compile(r'^(?:```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?|<[A-Za-z_][\w-]*>)\s*')


def _answer_is_cut_off(text: str) -> bool:
  """Whether the answer itself (after a leading fence or tag) is unclosed.

  Checked first, so a complete-looking object quoted *inside* the cut-off
  answer's strings can never be taken for the answer.
  """
  body = _LEADING_WRAPPER.sub('', text, count=1)
  return bool(body) and body[0] in _OPENERS and _is_unclosed(body)


def _load(candidate: str, rung: str, repair: bool):
  """Returns (value, rung that produced it) or (None, None/'truncated')."""
  try:
    return json.loads(candidate, strict=False), rung
  except ValueError:
    pass
  if candidate[0] in _OPENERS and _is_unclosed(candidate):
    return None, 'truncated'
  if not repair or candidate[0] not in _OPENERS:
    return None, None
  import json_repair
  try:
    value = json_repair.loads(candidate, skip_json_loads=True)
  except Exception:  # json_repair raises assorted errors on garbage.
    return None, None
  if value in ('', None) or value == [] and candidate.strip() != '[]':
    return None, None
  return value, 'repair'


def _is_unclosed(candidate: str) -> bool:
  spans = list(json_spans(candidate))
  return bool(spans) and spans[0][0] == 0 and spans[0][1] is None
