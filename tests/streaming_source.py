"""Test-only Beam YAML transforms for running a pipeline in streaming mode
without Pub/Sub (whose emulator cannot be installed here): a TestStream of
Pub/Sub-like messages in timed bursts, and a sink that logs arrivals.

Used by tests/test_streaming.py through a `type: python` provider.
"""
import json
import time

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.typehints import row_type

Message = row_type.RowTypeConstraint.from_fields([('payload', str)])


class ReadTimedMessages(beam.PTransform):
  """The lines of `payloads_file` in bursts of `burst` messages, processing
  time advancing `gap_secs` between bursts; each message logged to `log`.
  (A file, not inline: Beam YAML renders the pipeline file with Jinja, and
  message text may contain `{{ }}`.)"""
  def __init__(self, payloads_file: str, burst: int, gap_secs: float, log: str):
    super().__init__()
    with open(payloads_file) as f:
      self._payloads = f.read().splitlines()
    self._burst, self._gap, self._log = burst, gap_secs, log

  def expand(self, pbegin):
    stream = TestStream()
    for i in range(0, len(self._payloads), self._burst):
      stream = stream.add_elements(
          [beam.Row(payload=p) for p in self._payloads[i:i + self._burst]])
      stream = stream.advance_processing_time(self._gap)
    stream = stream.advance_watermark_to_infinity()
    log = self._log
    return (pbegin | stream
            | 'LogIn' >> beam.Map(_logged, 'in', log, 'payload').with_output_types(Message))


class LogArrivals(beam.PTransform):
  """Appends `tag <row as JSON>` for every row to `log`; passes rows on."""
  def __init__(self, tag: str, log: str):
    super().__init__()
    self._tag, self._log = tag, log

  def expand(self, pcoll):
    return pcoll | beam.Map(_logged, self._tag, self._log, None)


def _logged(row, tag, log, field):
  value = getattr(row, field) if field else json.dumps(
      row._asdict(), default=str, sort_keys=True)
  with open(log, 'a') as f:
    f.write(json.dumps({'tag': tag, 'row': value, 'at': time.time()}) + '\n')
  return row
