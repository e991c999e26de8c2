"""What a cascade's batch and streaming routes share (_cascade.py,
_cascade_stream.py): the fields it adds to rows, and how a sample of the
small model's answers sets the threshold."""
from typing import List, Optional, Tuple

import apache_beam as beam

from beam_llm import _rows

CONFIDENCE = 'beam_llm_confidence'
SMALL_ANSWER = 'beam_llm_small_answer'
_NEVER = float('inf')  # No threshold meets the target: the main model answers all.


def learn_threshold(sample: List[Tuple[float, bool]], target: float) -> float:
  """The lowest confidence c such that, of the sample rows with confidence
  >= c, at least `target` agree; +inf if none does."""
  best = _NEVER
  agree = total = 0
  ordered = sorted(sample, key=lambda s: -s[0])
  for i, (confidence, agreed) in enumerate(ordered):
    agree += agreed
    total += 1
    last_of_its_value = i + 1 == len(ordered) or ordered[i + 1][0] != confidence
    if last_of_its_value and agree >= target * total:
      best = confidence
  return best


def as_float(value) -> float:
  return -1.0 if value is None else float(value)


def keep_small_answer(row, answer: str):
  values = _rows.as_dict(row)
  values[SMALL_ANSWER] = values.pop(answer)
  return beam.Row(**values)


def plain(row, drop_answer: Optional[str] = None):
  """The row as GenerateText's output has it: the cascade's fields gone
  (and the small model's answer, for a row going to the main model)."""
  values = {k: v for k, v in _rows.as_dict(row).items()
            if k not in (CONFIDENCE, SMALL_ANSWER, drop_answer)}
  return beam.Row(**values)


def agreement(row, decided, answer: str) -> Tuple[float, bool]:
  values = _rows.as_dict(row)
  small = decided(values[SMALL_ANSWER])
  return (as_float(values.get(CONFIDENCE)),
          small is not None and small == decided(values[answer]))
