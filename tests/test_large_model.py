"""large_model with two worker processes: one model load per machine, every
row answered, nothing unpicklable crossing the process boundary."""
import json
import re

from tests.conftest import read_json_lines, run_yaml


def test_two_worker_processes_share_one_model(tiny_causal_lm, tmp_path):
  rows = [{'n': i, 'prompt': f'Hello number {i}'} for i in range(12)]
  rows.append({'n': 99, 'prompt': 'word ' * 3000})  # Too long: fails alone.
  pipeline = tmp_path / 'p.yaml'
  pipeline.write_text(f'''
pipeline:
  transforms:
    - type: Create
      config:
        elements: {json.dumps(rows)}
    - type: RenderPrompt
      input: Create
      config:
        messages: [{{role: user, content: "{{% raw %}}{{{{ prompt }}}}{{% endraw %}}"}}]
        output: chat
    - type: GenerateText
      input: RenderPrompt
      config:
        prompt: chat
        model_handler: {{type: HuggingFace, config: {{model: "{tiny_causal_lm}"}}}}
        max_new_tokens: 3
        max_batch_size: 2
        large_model: true
        error_handling: {{output: failed}}
    - type: MapToFields
      input: GenerateText
      config: {{fields: {{n: n, response: response}}}}
    - type: WriteToJson
      input: MapToFields
      config: {{path: "{tmp_path}/out"}}
    - type: FormatErrors
      input: GenerateText.failed
      config: {{fields: [n]}}
    - type: WriteToJson
      input: FormatErrors
      config: {{path: "{tmp_path}/out-errors"}}
providers:
  - type: python
    config: {{}}
    transforms:
      RenderPrompt: beam_llm.RenderPrompt
      GenerateText: beam_llm.GenerateText
      FormatErrors: beam_llm.FormatErrors
''')
  result = run_yaml(str(pipeline), '--direct_num_workers=2',
                    '--direct_running_mode=multi_processing')
  assert result.returncode == 0, result.stderr[-3000:]
  out = read_json_lines(str(tmp_path / 'out'))
  errors = read_json_lines(str(tmp_path / 'out-errors'))
  assert sorted(r['n'] for r in out) == list(range(12))
  assert [e['n'] for e in errors] == [99] and errors[0]['error_type'] == 'prompt_too_long'
  loads = set(re.findall(r'model loaded in [\d.]+s \(pid (\d+)\)', result.stderr))
  assert len(loads) == 1, result.stderr[-3000:]
