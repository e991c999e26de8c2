"""`beam-llm validate PIPELINE.yaml --estimate [--prices=TABLE]`: what a run
would send to its models, and cost, before paying for it.

The pipeline runs (FnApiRunner) with its sinks (`Write...` steps) left out
and every GenerateText counting instead of generating: the steps before it
run as they would (reading, rendering prompts; in a RAG pipeline the
embeddings and searches too), nothing is written and no model is called.
Prompt tokens are counted with the model's own tokenizer where the
backend has one on hand (HuggingFace: the model's tokenizer, offline), and
estimated at 4 characters a token elsewhere (marked `~`). Output tokens are
bounded by `max_new_tokens` per row. With a price table (cli/costs.py),
the cost in synchronous and in batch mode.
"""
import collections
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_llm.cli import costs

NAMESPACE = 'beam_llm.estimate'
# Set while `estimate` builds its pipeline: GenerateText counts instead.
ACTIVE = False
_CHARS_PER_TOKEN = 4


class CountPromptTokens(beam.DoFn):
  """(row, prompt) -> nothing; counts rows and prompt tokens per model."""
  def __init__(self, handler, max_new_tokens: int):
    self._handler = handler
    self._max_new_tokens = max_new_tokens

  def setup(self):
    self._model = (self._handler.describe_model().get('model')
                   or self._handler.backend)
    self._tokenizer = None
    if self._handler.backend == 'HuggingFace':
      try:
        from transformers import AutoTokenizer
        self._tokenizer = AutoTokenizer.from_pretrained(
            self._model, local_files_only=True)
      except Exception:  # pylint: disable=broad-except
        self._tokenizer = None  # Not on hand: estimated from characters.

  def process(self, keyed):
    prompt = keyed[1]
    prompt = getattr(prompt, 'prompt', prompt)  # A RowPrompt's.
    if isinstance(prompt, str):
      text = prompt
    else:
      text = '\n'.join(str(getattr(m, 'content', None) or
                           (m.get('content') if isinstance(m, dict) else ''))
                       for m in prompt or [])
    if self._tokenizer is not None:
      tokens, how = len(self._tokenizer(text)['input_ids']), 'exact'
    else:
      tokens, how = -(-len(text) // _CHARS_PER_TOKEN), 'approx'
    for name, value in (('rows', 1), (f'prompt_tokens_{how}', tokens),
                        ('max_output_tokens', self._max_new_tokens)):
      Metrics.counter(NAMESPACE, f'{self._model}|{name}').inc(value)
    return []


def run(argv: List[str], prices: Optional[Dict[str, dict]]) -> List[str]:
  """Runs the pipeline of `argv` counting; the report's lines."""
  global ACTIVE  # pylint: disable=global-statement
  import yaml
  from apache_beam.yaml import main as yaml_main
  _, pipeline_args, _, expanded = yaml_main._build_pipeline_yaml_from_argv(argv)  # pylint: disable=protected-access
  spec = yaml.safe_load(expanded)
  pipeline = spec['pipeline']
  steps = pipeline.get('transforms', []) if isinstance(pipeline, dict) else pipeline
  kept = [t for t in steps if not str(t.get('type', '')).startswith('Write')]
  if isinstance(pipeline, dict):
    pipeline['transforms'] = kept
  else:
    spec['pipeline'] = kept
  if not any(a.startswith('--runner') for a in pipeline_args):
    pipeline_args = [*pipeline_args, '--runner=FnApiRunner']
  ACTIVE = True
  try:
    options, constructor = yaml_main.build_pipeline_components_from_yaml(
        yaml.safe_dump(spec), pipeline_args)
    p = beam.Pipeline(options=options)
    constructor(p)
  finally:
    ACTIVE = False
  result = p.run()
  result.wait_until_finish()
  counts = collections.defaultdict(lambda: collections.defaultdict(int))
  for counter in result.metrics().query()['counters']:
    if counter.key.metric.namespace == NAMESPACE:
      model, _, name = counter.key.metric.name.rpartition('|')
      counts[model][name] += counter.committed or 0
  return report(counts, prices)


def report(counts, prices) -> List[str]:
  if not counts:
    return ['estimate: no GenerateText rows (no model would be called)']
  lines = []
  for model, c in sorted(counts.items()):
    exact, approx = c['prompt_tokens_exact'], c['prompt_tokens_approx']
    tokens = f'{exact + approx}' if not approx else f'~{exact + approx}'
    line = (f'estimate {model}: {c["rows"]} rows, {tokens} prompt tokens'
            f'{"" if not approx else " (4 characters a token)"}, at most '
            f'{c["max_output_tokens"]} output tokens')
    price = (prices or {}).get(model)
    if price is not None:
      sync_in = costs.cost(price, 'sync', exact + approx, 0)
      sync_all = costs.cost(price, 'sync', exact + approx, c['max_output_tokens'])
      batch_in = costs.cost(price, 'batch', exact + approx, 0)
      batch_all = costs.cost(price, 'batch', exact + approx,
                             c['max_output_tokens'])
      line += (f'; cost synchronously {costs.money(sync_in)} to '
               f'{costs.money(sync_all)}, with batch_api {costs.money(batch_in)}'
               f' to {costs.money(batch_all)} (prompts alone to every row '
               'writing max_new_tokens)')
    elif prices is not None:
      line += f'; no price for {model!r} in --prices'
    lines.append(line)
  return lines
