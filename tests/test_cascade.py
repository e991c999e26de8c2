"""Cascades (Classify's and SemanticFilter's `cascade`): a small model
answers with its confidence, a sample also goes to the main model, which
sets the confidence threshold; only rows under it go to the main model.

Both models are the fake OpenAI server with the real `openai` client,
answering by known rules, so every count is exact: the "small" model is
right and sure on most rows, and wrong and unsure on the tricky ones.
The confidence itself is tested on a real tiny HuggingFace model too."""
import json
import re

import pytest

import beam_llm
from beam_llm.transforms.semantic import _cascade_rows
from tests.beam_helpers import run_transform


def _row_id(prompt: str) -> int:
  return int(re.search(r'ticket (\d+)', prompt).group(1))


def main_reply(prompt):
  """The main model: right on every row."""
  return json.dumps({'label': 'refund' if 'money back' in prompt else 'other'})


def small_reply(prompt):
  """The small model: right and sure (0.97), except on tricky rows, where
  it is wrong and unsure (0.4)."""
  right = 'refund' if 'money back' in prompt else 'other'
  if 'tricky' in prompt:
    wrong = 'other' if right == 'refund' else 'refund'
    return json.dumps({'label': wrong}), 0.4
  return json.dumps({'label': right}), 0.97


def _rows(n=60, tricky_every=6):
  return [{'id': i, 'text': f'ticket {i}: ' + ('I want my money back' if i % 2
                                                else 'where is my order')
           + (' (tricky)' if i % tricky_every == 0 else '')}
          for i in range(n)]


def _classify(small, main, sample=20, target=0.95, seed=0):
  spec = lambda s: {'type': 'OpenAICompatible',
                    'config': {'model': 'm', 'base_url': s.url + '/v1'}}
  return beam_llm.Classify(
      field='text', labels=['refund', 'other'], model_handler=spec(main),
      cascade={'model_handler': spec(small), 'target_agreement': target,
               'sample': sample, 'seed': seed},
      error_handling={'output': 'errors'})


def test_a_threshold_is_the_lowest_confidence_that_meets_the_target():
  sample = [(0.9, True)] * 18 + [(0.5, True), (0.5, False), (0.2, False)]
  assert _cascade_rows.learn_threshold(sample, 0.95) == 0.5  # 19 of 20: 0.95.
  assert _cascade_rows.learn_threshold(sample, 0.99) == 0.9
  assert _cascade_rows.learn_threshold(sample, 0.9) == 0.2  # 19 of 21.
  assert _cascade_rows.learn_threshold([(0.3, False)], 0.5) == float('inf')
  assert _cascade_rows.learn_threshold([], 0.5) == float('inf')


def test_the_main_model_answers_the_sample_and_the_rows_under_the_threshold(
    llm_server):
  small, main = llm_server(reply=small_reply), llm_server(reply=main_reply)
  rows = _rows()
  out, _, metrics = run_transform(_classify(small, main), rows, metrics=True)
  assert out['errors'] == []
  # Every row once, every label right: the tricky rows were the main model's.
  assert sorted(r.id for r in out['good']) == list(range(60))
  for r in out['good']:
    assert r.label == ('refund' if r.id % 2 else 'other'), r
  assert len(small.log) == 60  # The small model saw every row.
  at_main = {_row_id(r.prompt) for r in main.log}
  tricky = {r['id'] for r in rows if 'tricky' in r['text']}
  assert tricky <= at_main  # Unsure rows went to the main model, once each;
  assert len(main.log) == len(at_main)
  # the others only if sampled (20 rows, some of them tricky).
  assert 20 - len(tricky) <= len(at_main - tricky) <= 20
  assert metrics['cascade_sample_rows'] == 20
  assert metrics['cascade_main_rows'] == len(main.log)
  assert metrics['cascade_small_rows'] == 60 - len(main.log)
  # Deterministic: the same seed picks the same sample and routes the same.
  small2, main2 = llm_server(reply=small_reply), llm_server(reply=main_reply)
  run_transform(_classify(small2, main2), rows)
  assert {_row_id(r.prompt) for r in main2.log} == at_main


def test_a_target_no_threshold_meets_sends_every_row_to_the_main_model(llm_server):
  def always_wrong(prompt):
    right = 'refund' if 'money back' in prompt else 'other'
    return json.dumps({'label': 'other' if right == 'refund' else 'refund'}), 0.9
  small, main = llm_server(reply=always_wrong), llm_server(reply=main_reply)
  out, _, metrics = run_transform(_classify(small, main, sample=10), _rows(30),
                                  metrics=True)
  assert len(main.log) == 30 and metrics.get('cascade_small_rows', 0) == 0
  assert all(r.label == ('refund' if r.id % 2 else 'other') for r in out['good'])


def test_semantic_filter_cascades_too(llm_server):
  def holds(prompt, sure=0.99):
    return json.dumps({'holds': 'money back' in prompt}), sure
  small = llm_server(reply=holds)
  main = llm_server(reply=lambda p: holds(p)[0])
  spec = lambda s: {'type': 'OpenAICompatible',
                    'config': {'model': 'm', 'base_url': s.url + '/v1'}}
  out, _ = run_transform(beam_llm.SemanticFilter(
      field='text', condition='The customer wants a refund.',
      model_handler=spec(main),
      cascade={'model_handler': spec(small), 'sample': 5}), _rows(20))
  assert sorted(r.id for r in out['good']) == list(range(1, 20, 2))
  assert len(main.log) == 5  # Only the sample: the small model agreed.


def test_cascade_options_are_checked_at_build(llm_server):
  server = llm_server()
  spec = {'type': 'OpenAICompatible',
          'config': {'model': 'm', 'base_url': server.url + '/v1'}}
  with pytest.raises(ValueError, match="Classify: option 'cascade.sampel' is unknown"):
    beam_llm.Classify(field='t', labels=['a', 'b'], model_handler=spec,
                      cascade={'model_handler': spec, 'sampel': 3})
  with pytest.raises(ValueError, match="option 'cascade.target_agreement' must be"):
    beam_llm.Classify(field='t', labels=['a', 'b'], model_handler=spec,
                      cascade={'model_handler': spec, 'target_agreement': 2})
  with pytest.raises(ValueError, match="confidence_output' is not supported by the Gemini"):
    beam_llm.Classify(field='t', labels=['a', 'b'], model_handler=spec,
                      cascade={'model_handler': {'type': 'Gemini', 'config': {
                          'model': 'g'}}})


def test_answers_carry_their_confidence(tiny_causal_lm, llm_server):
  """GenerateText's confidence_output: the probability of the answer's
  tokens, from a real tiny model (under the schema's constraint) and from
  a server's logprobs."""
  server = llm_server(reply=lambda p: ('{"label": "a"}', 0.25))
  schema = {'type': 'object', 'properties': {'label': {'enum': ['a', 'b']}},
            'required': ['label']}
  for spec, check in (
      ({'type': 'HuggingFace', 'config': {'model': tiny_causal_lm}},
       lambda c: 0 < c <= 1),
      ({'type': 'OpenAICompatible',
        'config': {'model': 'm', 'base_url': server.url + '/v1'}},
       lambda c: c == pytest.approx(0.25))):
    out, _ = run_transform(beam_llm.GenerateText(
        model_handler=spec, response_schema=schema, max_new_tokens=12,
        confidence_output='confidence'), [{'prompt': f'p{i}'} for i in range(4)])
    assert len(out['good']) == 4
    assert all(check(r.confidence) for r in out['good']), spec['type']


def test_a_row_the_main_model_refuses_is_an_error_row_with_the_input_fields(
    llm_server):
  from beam_llm.testing.fake_llm_server import Faults
  small = llm_server(reply=small_reply)
  main = llm_server(reply=main_reply, faults=Faults(
      script=['400'], script_for='tricky'))
  rows = _rows(12)
  out, _ = run_transform(_classify(small, main, sample=4), rows)
  [error] = out['errors']
  assert error.error_type == 'client_error'
  assert set(error.element._asdict()) == {'id', 'text'}  # No field of ours.
  assert 'tricky' in error.element.text
  assert sorted([r.id for r in out['good']] + [error.element.id]) == list(range(12))


def _record(path, tag, row):
  with open(path, 'a') as f:
    f.write(json.dumps({'tag': tag, 'id': row.id,
                        'label': getattr(row, 'label', None)}) + '\n')


def _classify_stream(small, main, tmp_path, windowed=False):
  """60 rows in three bursts of 20 (the third in a later window) through a
  Classify cascade with a sample of 10, on Beam's DirectRunner with
  --streaming: the rows out as {tag: good|error, id, label}."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.testing import test_stream
  from apache_beam.transforms import window
  rows = _rows(60)
  stream = test_stream.TestStream()
  for burst in range(3):
    stream = stream.add_elements([
        window.TimestampedValue(beam.Row(**r), 100 * (burst // 2))
        for r in rows[20 * burst:20 * burst + 20]])
    stream = stream.advance_processing_time(5)
  stream = stream.advance_watermark_to_infinity()
  log = str(tmp_path / 'out.jsonl')
  p = beam.Pipeline(options=PipelineOptions(
      ['--streaming', '--runner=DirectRunner']))
  rows_in = p | stream
  if windowed:
    rows_in = rows_in | beam.WindowInto(window.FixedWindows(60))
  out = rows_in | _classify(small, main, sample=10)
  _ = out['good'] | 'Good' >> beam.Map(lambda r: _record(log, 'good', r))
  _ = out['errors'] | 'Errors' >> beam.Map(
      lambda e: _record(log, 'error', e.element))
  p.run().wait_until_finish()
  with open(log) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize('windowed', [False, True])
def test_on_a_stream_the_first_rows_are_the_sample_and_no_row_waits(
    llm_server, tmp_path, windowed):
  """Streaming input (a TestStream in bursts): a window's first `sample`
  rows teach its threshold; rows routed before it is known go to the main
  model; every row once. Windowed, the third burst opens a new window,
  which learns afresh."""
  small, main = llm_server(reply=small_reply), llm_server(reply=main_reply)
  got = _classify_stream(small, main, tmp_path, windowed)
  assert sorted(r['id'] for r in got) == list(range(60))  # Each row once.
  assert {r['tag'] for r in got} == {'good'}
  assert all(r['label'] == ('refund' if r['id'] % 2 else 'other') for r in got)
  assert len(small.log) == 60
  at_main = [_row_id(r.prompt) for r in main.log]
  assert len(at_main) == len(set(at_main))
  tricky = {r['id'] for r in _rows(60) if 'tricky' in r['text']}
  # A window's first burst goes to the main model: 10 rows as the sample,
  # 10 while their answers were out. Its later bursts (the DirectRunner
  # finishes one TestStream event's work before the next) only their unsure
  # rows. (Beam's streaming DirectRunner reports only part of the metrics.)
  learning = set(range(20)) | (set(range(40, 60)) if windowed else set())
  assert set(at_main) == learning | tricky


def test_on_a_stream_a_sample_row_the_main_model_refuses_is_an_error_row(
    llm_server, tmp_path):
  """Row 0 (tricky, in the sample) is refused by the main model: it is an
  error row, and the 9 answered sample rows still set the threshold, so
  the later bursts send only their unsure rows to the main model."""
  from beam_llm.testing.fake_llm_server import Faults
  small = llm_server(reply=small_reply)
  main = llm_server(reply=main_reply, faults=Faults(
      script=['400'], script_for='tricky'))
  got = _classify_stream(small, main, tmp_path)
  assert sorted(r['id'] for r in got) == list(range(60))  # Each row once.
  assert [r['id'] for r in got if r['tag'] == 'error'] == [0]
  assert all(r['label'] == ('refund' if r['id'] % 2 else 'other')
             for r in got if r['tag'] == 'good')
  at_main = {_row_id(r.prompt) for r in main.log}
  tricky = {r['id'] for r in _rows(60) if 'tricky' in r['text']}
  assert at_main == set(range(20)) | tricky
