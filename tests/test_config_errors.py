"""Bad configs fail when the pipeline is built, before any model loads, with
a message that names the transform and the key."""
import textwrap

import apache_beam as beam
import pytest
import yaml
from apache_beam.yaml import main as yaml_main

PROVIDERS = """
providers:
  - type: python
    config: {}
    transforms:
      RenderPrompt: beam_llm.RenderPrompt
      GenerateText: beam_llm.GenerateText
      ParseJSON: beam_llm.ParseJSON
"""

GOOD = {
    'render': {'template_file': 'pipelines/prompts/chat_sentiment.j2',
               'variables': {'agent': 'the support agent'}},
    'generate': {
        'model_handler': {'type': 'HuggingFace', 'config': {'model': 'MODEL'}},
        'max_new_tokens': 16,
    },
    'parse': {'field': 'response', 'schema_file': 'schemas/sentiment_summary.json'},
}


def build(tiny_causal_lm, render=None, generate=None, parse=None):
  """Builds (does not run) Create -> RenderPrompt -> GenerateText -> ParseJSON."""
  generate_config = generate or GOOD['generate']
  spec = {
      'pipeline': {
          'transforms': [
              {'type': 'Create', 'config': {'elements': [
                  {'chat_id': 1, 'history': 'user_id 1: hi'}]}},
              {'type': 'RenderPrompt', 'input': 'Create',
               'config': render or GOOD['render']},
              {'type': 'GenerateText', 'input': 'RenderPrompt',
               'config': generate_config},
              {'type': 'ParseJSON', 'input': 'GenerateText',
               'config': parse or GOOD['parse']},
          ]
      }
  }
  text = yaml.safe_dump(spec).replace('MODEL', tiny_causal_lm) + PROVIDERS
  _, constructor = yaml_main.build_pipeline_components_from_yaml(
      text, ['--runner=FnApiRunner'])
  constructor(beam.Pipeline(runner='FnApiRunner'))


def handler(**config):
  return {'model_handler': {'type': 'HuggingFace', 'config': config}}


BAD = [
    # (what is wrong, which transform, config overrides, expected message)
    ('unknown option', 'GenerateText',
     {'generate': {**GOOD['generate'], 'max_new_token': 5}}, 'max_new_token'),
    ('unknown backend option', 'GenerateText',
     {'generate': handler(model='MODEL', devise='cpu')},
     r"option 'model_handler.config.devise' is unknown \(did you mean 'device'\?\)"),
    ('unknown backend', 'GenerateText',
     {'generate': {'model_handler': {'type': 'HugginFace', 'config': {}}}},
     r"option 'model_handler.type' names an unknown backend 'HugginFace'; choose one of .*HuggingFace"),
    ('wrong type', 'GenerateText',
     {'generate': {**GOOD['generate'], 'max_new_tokens': 'lots'}},
     r"option 'max_new_tokens' must be an integer, got str 'lots'"),
    ('missing required backend option', 'GenerateText',
     {'generate': handler(device='cpu')},
     r"option 'model_handler.config.model' is required"),
    ('missing required option', 'GenerateText',
     {'generate': {'max_new_tokens': 5}}, 'model_handler'),
    ('value out of its set', 'GenerateText',
     {'generate': handler(model='MODEL', device='gpu')},
     r"option 'model_handler.config.device' must be one of 'auto', 'cpu', 'cuda'"),
    ('bad batch bounds', 'GenerateText',
     {'generate': {**GOOD['generate'], 'min_batch_size': 8, 'max_batch_size': 2}},
     r"option 'min_batch_size' \(8\) exceeds max_batch_size \(2\)"),
    ('prompt field missing from the input', 'GenerateText',
     {'generate': {**GOOD['generate'], 'prompt': 'question'}},
     r"option 'prompt' names field 'question', which the input does not have"),
    ('local model directory missing', 'GenerateText',
     {'generate': handler(model='/no/such/model')}, 'no such local directory'),
    ('template variable with no source', 'RenderPrompt',
     {'render': {'template': 'x'.join(['{{ histroy }}'] * 2)}},
     r"option 'template' uses variable\(s\) histroy that are not fields of the input"),
    ('template and template_file', 'RenderPrompt',
     {'render': {'template': 'a', 'template_file': 'b'}}, 'give exactly one of'),
    ('template syntax', 'RenderPrompt',
     {'render': {'template': '{% if %}'}}, 'template syntax error'),
    ('schema file missing', 'ParseJSON',
     {'parse': {'field': 'response', 'schema_file': 'schemas/nope.json'}},
     r"option 'schema_file': cannot read 'schemas/nope.json'"),
    ('parsed field missing from the input', 'ParseJSON',
     {'parse': {'field': 'answer', 'schema_file': 'schemas/sentiment_summary.json'}},
     r"option 'field' names field 'answer'"),
    ('error_handling without output', 'ParseJSON',
     {'parse': {**GOOD['parse'], 'error_handling': {'outptu': 'x'}}},
     # Beam YAML catches this one itself, before our own check.
     r"Missing output in error_handling"),
]


@pytest.mark.parametrize(
    'what, transform, overrides, message', BAD, ids=[b[0] for b in BAD])
def test_bad_config_fails_at_build_naming_transform_and_key(
    tiny_causal_lm, monkeypatch, what, transform, overrides, message):
  monkeypatch.chdir(__import__('tests.conftest').conftest.ROOT)
  with pytest.raises(Exception) as info:
    build(tiny_causal_lm, **overrides)
  text = str(info.value)
  assert f'"{transform}"' in text or f'{transform}:' in text, text
  assert info.match(message), text


def test_the_good_config_builds(tiny_causal_lm, monkeypatch):
  monkeypatch.chdir(__import__('tests.conftest').conftest.ROOT)
  build(tiny_causal_lm)
