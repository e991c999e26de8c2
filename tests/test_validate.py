"""`beam-llm validate`: every problem, one line each, no traceback, offline."""
import glob
import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

PIPELINES = sorted(  # Every bundled pipeline, with its default variables.
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'pipelines', '*.yaml')))

# The leading comment block (Beam strips it before parsing) must not shift
# the line numbers in the messages.
BROKEN = textwrap.dedent('''\
    # A pipeline with one mistake after another,
    # commented as every bundled pipeline is.

    pipeline:
      transforms:
        - type: ReadFromJson
          name: Read
          config: {path: x.jsonl}
        - type: RenderPrompt
          input: Raed
          config: {template: "hi", outptu: p}
        - type: GenerateText
          name: Gen
          input: RenderPrompt
          config:
            model_handler: {type: HuggingFace, config: {model: /no/such/model}}
            error_handling: {output: failed}
        - type: ParseJSON
          input: Gen
          config: {field: response, schema_file: nope.json}
    providers:
      - type: python
        config: {}
        transforms: {RenderPrompt: beam_llm.RenderPrompt, GenerateText: beam_llm.GenerateText, ParseJSON: beam_llm.ParseJSON}
    ''')


def _validate(*args, env=None):
  import os
  return subprocess.run([sys.executable, '-m', 'beam_llm', 'validate', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(env or {})})


def test_every_bundled_pipeline_validates_clean():
  result = _validate(*PIPELINES)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert result.stdout.splitlines() == [f'{p}: OK' for p in PIPELINES]
  # Beam's warning about the key coder of its own keyed batching (streaming).
  assert 'Key coder' not in result.stderr


def test_a_broken_pipeline_gets_one_line_per_problem(tmp_path):
  path = tmp_path / 'broken.yaml'
  path.write_text(BROKEN)
  result = _validate(str(path))
  assert result.returncode == 1
  assert 'Traceback' not in result.stdout + result.stderr
  lines = [l[len(str(path)) + 2:] for l in result.stdout.splitlines()]
  assert lines == [
      "line 9: RenderPrompt: input 'Raed' names no transform of this pipeline "
      "(known: Gen, ParseJSON, Read, RenderPrompt)",
      "line 9: RenderPrompt: option 'outptu' is unknown (did you mean "
      "'output'?); known options: error_handling, lineage, messages, output, template, "
      "template_file, variables",
      "line 12: Gen (GenerateText): HuggingFace model '/no/such/model' is not "
      "available: no such local directory '/no/such/model'. Check the path: "
      "it must be a model directory saved with save_pretrained (or fetched "
      "on a connected machine with `hf download REPO_ID --local-dir DIR`)",
      "line 18: ParseJSON: option 'schema_file': cannot read 'nope.json' "
      f"(relative paths are resolved from '{ROOT}'): [Errno 2] No such file "
      "or directory: 'nope.json'",
      "line 12: Gen (GenerateText): error output 'failed' is not consumed: "
      "give 'Gen.failed' as the input of a transform (e.g. a WriteToJson of "
      "the errors), or rows that fail would be lost",
  ]


def test_offline_by_default_reachability_on_request():
  # A hub id that is not cached: offline validation trusts it; with
  # --check_reachable the (unreachable) hub is asked, and it fails.
  variables = '--jinja_variables=' + json.dumps({'model': 'nobody/no-such-model'})
  env = {'HF_ENDPOINT': 'http://127.0.0.1:1', 'HF_HUB_ETAG_TIMEOUT': '2'}
  result = _validate('pipelines/summarize.yaml', variables, env=env)
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]
  result = _validate('pipelines/summarize.yaml', variables, '--check_reachable',
                     env=env)
  assert result.returncode == 1
  assert "HuggingFace model 'nobody/no-such-model' is not available" in result.stdout


def test_a_misspelt_or_unquoted_jinja_variable_is_one_clear_line():
  result = _validate('pipelines/summarize.yaml',
                     '--jinja_variables={"modle": "/tmp/m"}')
  assert result.returncode == 1
  assert result.stdout.splitlines() == [
      "pipelines/summarize.yaml: --jinja_variables: the pipeline uses no "
      "variable 'modle' (did you mean 'model'?); its variables: input, "
      "max_new_tokens, model, output, use_chat_template"]
  # Python's quotes: one message (not argparse's usage banner, twice), for
  # run as for validate.
  for command in ('validate', 'run'):
    result = subprocess.run(
        [sys.executable, '-m', 'beam_llm', command, 'pipelines/summarize.yaml',
         "--jinja_variables={'model': '/tmp/m'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    out = (result.stdout + result.stderr).strip()
    assert 'usage' not in out
    assert out.splitlines() == [
        "pipelines/summarize.yaml: --jinja_variables is not valid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1) (JSON wants double quotes: --jinja_variables='{\"model\": "
        "\"DIR\"}'); got {'model': '/tmp/m'}"]
