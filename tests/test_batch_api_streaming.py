"""Batch mode in a streaming pipeline (Beam's DirectRunner with
--streaming, rows from a TestStream in bursts): each file's batches are
waited for by a stateful DoFn on timers (a splittable DoFn cannot run in
the DirectRunner's streaming mode), and every row still comes out exactly
once, through failing and expiring batch lines."""
import collections
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream

from beam_llm import GenerateText
from beam_llm.testing.fake_batch_api import BatchFaults


def _record(path, tag, element):
  with open(path, 'a') as f:
    f.write(json.dumps({'tag': tag, 'prompt': element.prompt}) + '\n')


def test_batch_mode_in_a_streaming_pipeline_answers_every_row_once(
    llm_server, tmp_path):
  server = llm_server(batch_faults=BatchFaults(
      line_server_error=0.2, expire_first_half=True, in_progress_secs=0.2))
  prompts = [f'burst {b} row {i}' for b in range(3) for i in range(8)]
  stream = test_stream.TestStream()
  for b in range(3):
    stream = stream.add_elements(
        [beam.Row(prompt=p) for p in prompts[8 * b:8 * b + 8]])
    stream = stream.advance_processing_time(5)
  stream = stream.advance_watermark_to_infinity()
  log = str(tmp_path / 'out.jsonl')
  p = beam.Pipeline(options=PipelineOptions(
      ['--streaming', '--runner=DirectRunner']))
  out = p | stream | GenerateText(
      model_handler={'type': 'OpenAICompatible', 'config': {
          'base_url': server.url + '/v1', 'model': 'm', 'batch_api': True,
          'batch_max_requests': 5, 'batch_poll_secs': 0.1,
          'initial_backoff_secs': 0.01}},
      error_handling={'output': 'failed'})
  _ = out['good'] | 'Good' >> beam.Map(lambda r: _record(log, 'good', r))
  _ = out['failed'] | 'Failed' >> beam.Map(
      lambda e: _record(log, 'failed', e.element))
  p.run().wait_until_finish()
  with open(log) as f:
    rows = [json.loads(line) for line in f]
  assert collections.Counter(r['prompt'] for r in rows) == collections.Counter(
      prompts), 'every row exactly once'
  assert {r['tag'] for r in rows} == {'good'}
  api = server.batch_api
  statuses = collections.Counter(b['status'] for b in api.batch_list())
  assert statuses['expired'] == 1  # Its unrun lines went in a follow-up.
  assert api.lines > len(prompts)  # Failed lines were resubmitted.
  assert not any(r.path.endswith('/chat/completions') for r in server.log)
