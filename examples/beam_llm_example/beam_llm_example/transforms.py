"""`type: Redact`: masks e-mail addresses and long numbers in a text field,
e.g. before the text goes to a model behind an API.

A transform is a PTransform whose constructor signature is its YAML config
and whose class docstring (Google `Args:`) is its documentation; the helpers
in beam_llm.extensions check options, route bad rows to the error output
and fail loudly without error_handling, as beam-llm's own transforms do.
"""
import re
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.typehints.schemas import named_fields_from_element_type

from beam_llm import extensions

_EMAIL = re.compile(r'[\w.+-]+@[\w-]+\.[\w.-]+')
_NUMBER = re.compile(r'\d{4,}')


class Redact(beam.PTransform):
  """Masks e-mail addresses and numbers of 4 or more digits in a text field.

  Args:
    field: The text field to redact in place.
    mask: What replaces each match. Defaults to `[redacted]`.
    error_handling: `{output: <name>}` sends rows whose field is not text
      to that output (`error_type: not_text`).
  """
  def __init__(
      self,
      field: str,
      mask: str = '[redacted]',
      error_handling: Optional[Mapping[str, Any]] = None):
    super().__init__()
    extensions.check_options('Redact', Redact.__init__, dict(
        field=field, mask=mask, error_handling=error_handling))
    if not mask:
      extensions.config_error('Redact', 'mask', 'is empty')
    self._field = field
    self._mask = mask
    self._error_output = extensions.error_output_name('Redact', error_handling)

  def expand(self, pcoll):
    names = [n for n, _ in named_fields_from_element_type(pcoll.element_type)]
    if self._field not in names:
      extensions.config_error(
          'Redact', 'field', f'names field {self._field!r}, which the input '
          f'does not have (input fields: {", ".join(names)})')
    return extensions.split_outputs(
        pcoll, 'Redact', _RedactDoFn(self._field, self._mask),
        pcoll.element_type, self._error_output)


class _RedactDoFn(beam.DoFn):
  def __init__(self, field, mask):
    self._field = field
    self._mask = mask

  def process(self, row):
    text = getattr(row, self._field)
    if not isinstance(text, str):
      yield from extensions.error(row, f'Redact (not_text): field '
                                  f'{self._field!r} is not text', 'not_text')
      return
    text = _NUMBER.sub(self._mask, _EMAIL.sub(self._mask, text))
    yield beam.Row(**{**row._asdict(), self._field: text})
