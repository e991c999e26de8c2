"""A package adds a backend and a transform through entry points: the example
package (examples/beam_llm_example) is installed into a temporary directory
and used by a pipeline run through `apache_beam.yaml.main`."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, read_json_lines, run_yaml

EXAMPLE = os.path.join(ROOT, 'examples', 'beam_llm_example')


@pytest.fixture(scope='module')
def example_env(tmp_path_factory):
  """PYTHONPATH with the example package installed (wheel built by pip)."""
  target = tmp_path_factory.mktemp('site')
  subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
       '--no-build-isolation', '--target', str(target), EXAMPLE],
      check=True, capture_output=True)
  return {'PYTHONPATH': os.pathsep.join([ROOT, str(target)])}


def python(env, *args):
  out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, **env})
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_a_pipeline_uses_the_extension_transform_and_backend(example_env, tmp_path, chats):
  # The pipeline includes the listing shipped in beam-llm (by its package
  # path, through Beam YAML's Jinja pass), which finds the extension's Redact.
  prefix = str(tmp_path / 'out')
  result = run_yaml('examples/beam_llm_example/pipeline.yaml', env=example_env,
                    jinja_variables={'output': prefix})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_json_lines(prefix)
  assert read_json_lines(prefix + '-errors') == []
  assert sorted(r['chat_id'] for r in rows) == sorted(c['chat_id'] for c in chats)
  by_id = {r['chat_id']: r for r in rows}
  assert by_id[4116]['label'] == 'unhappy'  # "annoyed"
  assert by_id[4118]['label'] == 'happy'  # "loved"
  assert by_id[4119]['label'] == 'neutral'  # No keyword: the default.
  assert by_id[4121]['label'] == 'happy'  # "perfect"
  # Redact ran first: the order number is masked.
  assert '#[redacted]' in by_id[4117]['history'] and '5521' not in by_id[4117]['history']


CHECK = '''
import json, sys
import apache_beam as beam
from apache_beam.yaml import main
for spec in sys.argv[1:]:
  try:
    _, build = main.build_pipeline_components_from_yaml(spec, ['--runner=FnApiRunner'])
    build(beam.Pipeline(runner='FnApiRunner'))
    print(json.dumps('built'))
  except Exception as e:
    print(json.dumps(str(e)))
'''

BAD_BACKENDS = [
    ({'type': 'Keywrd', 'config': {}},
     "unknown backend 'Keywrd'; choose one of Gemini, HuggingFace, KerasHub, Keyword,"),
    ({'type': 'Keyword', 'config': {'answer': {}}},
     "Classify: option 'model_handler.config.answer' is unknown (did you mean 'answers'?)"),
]


def test_extension_backends_get_the_build_time_checks_and_the_listing_by_path(
    example_env):
  # `- include: <path>` (the path `python -m beam_llm.provider` prints) reads
  # the shipped listing without Jinja: Redact is found there too.
  path = python(example_env, '-m', 'beam_llm.provider').strip()
  by_path = json.dumps({
      'pipeline': {'transforms': [
          {'type': 'Create', 'config': {'elements': [{'text': 'order #12345'}]}},
          {'type': 'Redact', 'input': 'Create', 'config': {'field': 'text'}}]},
      'providers': [{'include': path}]})
  specs = [json.dumps({
      'pipeline': {'transforms': [
          {'type': 'Create', 'config': {'elements': [{'text': 'hi'}]}},
          {'type': 'Classify', 'input': 'Create', 'config': {
              'field': 'text', 'labels': ['a', 'b'], 'model_handler': handler}}]},
      'providers': [{'type': 'python', 'config': {},
                     'transforms': {'Classify': 'beam_llm.Classify'}}]})
           for handler, _ in BAD_BACKENDS]
  # One process for all (building a pipeline first imports much of Beam).
  results = [json.loads(line) for line in
             python(example_env, '-c', CHECK, by_path, *specs).splitlines()]
  assert results[0] == 'built'
  for (_, message), result in zip(BAD_BACKENDS, results[1:]):
    assert message in result


def test_extension_reference_docs_are_generated(example_env):
  text = python(example_env, '-m', 'beam_llm.docgen', '--extensions')
  assert '## Redact' in text and '## GenerateText backend `Keyword`' in text
  assert '| `answers` | `Mapping[str, str]` | `required` | Keyword -> answer, tried in order. |' in text
  assert '| `mask` |' in text and '## Classify' not in text


def test_validate_checks_extension_transforms_like_built_ins(example_env, tmp_path):
  # One message per problem, naming the transform and the key, no traceback.
  pipeline = tmp_path / 'p.yaml'
  pipeline.write_text(
      "pipeline:\n  transforms:\n"
      "    - {type: Create, config: {elements: [{text: a}]}}\n"
      "    - {type: Redact, input: Create, config: {field: text, mask: ''}}\n"
      "    - {type: Redact, name: R2, input: Create, config: {fild: text}}\n"
      "providers:\n{% include 'beam_llm/provider/providers.yaml' %}\n")
  out = subprocess.run([sys.executable, '-m', 'beam_llm', 'validate', str(pipeline)],
                       cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **example_env})
  assert out.returncode == 1, out.stderr[-2000:]
  problems = out.stdout.strip().splitlines()
  assert len(problems) == 2, out.stdout
  assert "Redact: option 'mask' is empty" in problems[0]
  assert "option 'fild' is unknown (did you mean 'field'?)" in problems[1]
  assert 'Traceback' not in out.stdout + out.stderr
