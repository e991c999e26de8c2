"""Cost of schema-constrained decoding vs free decoding, and llguidance
(what GenerateText uses) vs xgrammar (what it used before issue 10).

Same tiny random-weight Llama, same prompts (the sample chats rendered with
the chat-sentiment prompt), same batch size, one run: generated tokens per
second with GenerateText's response_schema vs without. Run twice, with the
tiny tokenizer (~400 tokens) and padded to a real-model-sized vocabulary
(~32k), because the per-step mask grows with the vocabulary. The xgrammar
column needs `pip install xgrammar` (then uninstall triton, or TensorFlow
and Triton clash in one process: see README).

    python bench/constrained_decoding.py
"""
import argparse
import json
import os
import tempfile
import time

import jinja2
import torch

from beam_llm.handlers.huggingface import HuggingFaceHandler
from beam_llm.testing.tiny_models import build_causal_lm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompts():
  with open(os.path.join(ROOT, 'pipelines', 'prompts', 'chat_sentiment.j2')) as f:
    template = jinja2.Template(f.read())
  with open(os.path.join(ROOT, 'pipelines', 'data', 'chats.jsonl')) as f:
    chats = [json.loads(line) for line in f]
  return [[{'role': 'user', 'content': template.render(**c)}] for c in chats]


class XGrammarConstraint:
  """The pre-issue-10 constraint, kept here only to compare against."""
  def __init__(self, schema, tokenizer, vocab_size):
    import xgrammar
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    self.grammar = xgrammar.GrammarCompiler(info).compile_json_schema(
        json.dumps(schema), any_whitespace=False)

  def logits_processor(self):
    from xgrammar.contrib.hf import LogitsProcessor
    return LogitsProcessor(self.grammar)


def tokens_per_second(model_dir, batch, schema, max_new_tokens, repeats,
                      engine='llguidance'):
  generation = {'max_new_tokens': max_new_tokens}
  if schema:
    generation['response_schema'] = schema
  handler = HuggingFaceHandler(model=model_dir, generation=generation, batching={})
  loaded = handler.load_model()
  if engine == 'xgrammar':
    loaded.constraint = XGrammarConstraint(
        schema, loaded.tokenizer, loaded.model.config.vocab_size)
  handler.run_inference(batch[:2], loaded)  # Warm-up (grammar caches, kernels).
  handler.usage['output_tokens'] = 0
  seconds = 0.0
  for _ in range(repeats):
    start = time.perf_counter()
    handler.run_inference(batch, loaded)
    seconds += time.perf_counter() - start
  tokens = handler.usage['output_tokens']
  return tokens / seconds, tokens


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--max_new_tokens', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(1)
  with open(os.path.join(ROOT, 'schemas', 'sentiment_summary.json')) as f:
    schema = json.load(f)
  batch = prompts()
  try:
    import xgrammar  # noqa: F401
    engines = ['llguidance', 'xgrammar']
  except ImportError:
    engines = ['llguidance']
  print('| vocab | batch | max_new_tokens | engine | free tok/s (tokens) | '
        'constrained tok/s (tokens) | constrained/free | added µs per token |')
  print('|---|---|---|---|---|---|---|---|')
  for extra_vocab in (0, 32000):
    with tempfile.TemporaryDirectory() as d:
      build_causal_lm(d)
      if extra_vocab:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(d)
        tok.add_tokens([f'tok{i}' for i in range(extra_vocab)])
        model = AutoModelForCausalLM.from_pretrained(d)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        model.save_pretrained(d)
        tok.save_pretrained(d)
      from transformers import AutoTokenizer
      vocab = len(AutoTokenizer.from_pretrained(d))
      free, free_n = tokens_per_second(d, batch, None, args.max_new_tokens, args.repeats)
      for engine in engines:
        constrained, con_n = tokens_per_second(
            d, batch, schema, args.max_new_tokens, args.repeats, engine)
        # Per generated token, what the mask adds: transferable to real
        # models, whose forward pass costs far more than this tiny model's.
        added_us = (1 / constrained - 1 / free) * 1e6
        print(f'| {vocab} | {len(batch)} | {args.max_new_tokens} | {engine} | '
              f'{free:.0f} ({free_n}) | {constrained:.0f} ({con_n}) | '
              f'{constrained / free:.2f} | {added_us:.0f} |', flush=True)


if __name__ == '__main__':
  main()
