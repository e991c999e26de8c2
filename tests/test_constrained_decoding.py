"""Schema-constrained decoding: a tiny model with RANDOM weights writes
schema-valid JSON for every sample chat. Left free, it never does: the
constraint, not luck, makes the output valid."""
import json

import jsonschema
import pytest

from beam_llm import json_extract
from beam_llm.handlers.huggingface import HuggingFaceHandler
from tests.conftest import ROOT, read_json_lines, run_yaml
from tests.test_parse_json import SCHEMA, SCHEMA_FILE, _validator

with open(f'{ROOT}/pipelines/prompts/chat_sentiment.j2') as f:
  USER_TEMPLATE = f.read()


def _prompts(chats):
  import jinja2
  template = jinja2.Template(USER_TEMPLATE)
  return [[{'role': 'system', 'content': 'You answer with JSON only.'},
           {'role': 'user', 'content': template.render(**c)}] for c in chats]


def _generate(model_dir, prompts, max_new_tokens, schema):
  generation = {'max_new_tokens': max_new_tokens}
  if schema:
    generation['response_schema'] = schema
  handler = HuggingFaceHandler(model=model_dir, generation=generation, batching={})
  return [r.inference.text for r in handler.run_inference(prompts, handler.load_model())]


def test_random_weights_constrained_output_validates_for_every_chat(
    tiny_causal_lm, chats):
  responses = _generate(tiny_causal_lm, _prompts(chats), 700, SCHEMA)
  assert len(responses) == len(chats)
  for text in responses:
    value = json.loads(text, strict=False)  # Strict parse: no ladder needed.
    jsonschema.validate(value, SCHEMA)


def test_masks_computed_during_the_forward_pass_change_nothing(
    tiny_causal_lm, chats):
  """The GPU path (masks for the next step started in a thread as soon as
  a step's tokens are chosen) writes exactly what the step-by-step path
  writes; run here on CPU, where only the timing differs."""
  handler = HuggingFaceHandler(
      model=tiny_causal_lm, dtype='float32',
      generation={'max_new_tokens': 80, 'response_schema': SCHEMA},
      batching={})
  model = handler.load_model()
  prompts = _prompts(chats)
  assert not model.overlap_masks  # CPU: off by default.
  inline = [r.inference.text for r in handler.run_inference(prompts, model)]
  model.overlap_masks = True
  overlapped = [r.inference.text for r in handler.run_inference(prompts, model)]
  assert overlapped == inline
  assert all(t.startswith('{"sentiment":') for t in inline)


def test_the_same_model_unconstrained_produces_no_valid_json(tiny_causal_lm, chats):
  responses = _generate(tiny_causal_lm, _prompts(chats), 60, None)
  valid = 0
  for text in responses:
    try:
      json_extract.parse(text, _validator())
      valid += 1
    except json_extract.ParseFailure:
      pass
  assert valid == 0


def test_too_few_new_tokens_is_reported_as_truncated(tiny_causal_lm, chats):
  [text] = _generate(tiny_causal_lm, _prompts(chats[:1]), 12, SCHEMA)
  assert text.startswith('{"sentiment":')
  with pytest.raises(json_extract.ParseFailure) as info:
    json_extract.parse(text, _validator())
  assert info.value.rung == 'truncated'


def test_chat_sentiment_pipeline_on_random_weights_gives_typed_rows(
    tiny_causal_lm, tmp_path, chats):
  prefix = str(tmp_path / 'out')
  result = run_yaml(
      'pipelines/chat_sentiment.yaml',
      jinja_variables={'model': tiny_causal_lm, 'output': prefix, 'max_new_tokens': 700})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_json_lines(prefix)
  assert read_json_lines(prefix + '-errors') == []
  assert sorted(r['chat_id'] for r in rows) == sorted(c['chat_id'] for c in chats)
  for row in rows:
    assert set(row) == {'chat_id', 'sentiment', 'summary'}
    assert row['sentiment'] in (-1, 0, 1)
    assert 1 <= len(row['summary']) <= 512
