"""The instance and parameter templates of VertexAI requests, and where the
text is in a prediction."""
import string
from typing import Mapping, Optional

from beam_llm import remote

ROW = 'row.'  # `${row.FIELD}`: a field of the input row.
# Where the text of a prediction that is an object is, in this order.
TEXT_FIELDS = ('content', 'text', 'generated_text', 'output', 'outputs')


class _Template(string.Template):
  """`${name}` and `${row.field}`."""
  idpattern = r'(?a:[_a-z][_a-z0-9]*(?:\.[_a-z][_a-z0-9]*)?)'


def placeholders(template) -> list:
  if isinstance(template, str):
    return [m.group('named') or m.group('braced')
            for m in _Template.pattern.finditer(template)
            if m.group('named') or m.group('braced')]
  if isinstance(template, Mapping):
    return [n for v in template.values() for n in placeholders(v)]
  if isinstance(template, (list, tuple)):
    return [n for v in template for n in placeholders(v)]
  return []


def fill(template, values: dict, drop_unset: bool = False):
  """The template with placeholders replaced by `values`."""
  if isinstance(template, str):
    m = _Template.pattern.fullmatch(template)
    if m and (m.group('named') or m.group('braced')):
      return values.get(m.group('named') or m.group('braced'))
    return _Template(template).substitute(
        {k: '' if v is None else str(v) for k, v in values.items()})
  if isinstance(template, Mapping):
    filled = {k: fill(v, values, drop_unset) for k, v in template.items()}
    return {k: v for k, v in filled.items()
            if not (drop_unset and v is None)}
  if isinstance(template, (list, tuple)):
    return [fill(v, values, drop_unset) for v in template]
  return template


def plain(value):
  """Row values as JSON-able data (nested rows as objects)."""
  if hasattr(value, '_asdict'):
    return {k: plain(v) for k, v in value._asdict().items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value


def text_of(prediction, field: Optional[str]) -> str:
  if field:
    value = prediction
    for part in field.split('.'):
      if isinstance(value, Mapping) and part in value:
        value = value[part]
      elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
        value = value[int(part)]
      else:
        raise remote.BadResponse(
            f'the prediction has no {field!r} (response_field): '
            f'{str(prediction)[:200]}')
  else:
    value = prediction
    if isinstance(value, Mapping):
      value = next((value[k] for k in TEXT_FIELDS if k in value), None)
  if isinstance(value, list) and len(value) == 1:
    value = value[0]
  if not isinstance(value, str):
    raise remote.BadResponse(
        'the prediction holds no text (set response_field to its path): '
        f'{str(prediction)[:200]}')
  return value
