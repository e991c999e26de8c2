"""Batching by tokens on CPU: GenerateText with default options against a
plain `model.generate` loop over batches of 16 in arrival order.

Mixed-length prompts (40 to 1,600 characters, cut from the sample chats,
seeded), a random-weight Llama (hidden 512 x 8 layers, vocab 32000: ~57M
parameters), greedy, the same new tokens per row. Every variant's time
includes loading the model; the pipeline's also Beam's start-up and
shutdown. Variants run in turn, `--rounds` times, and the table gives each
one's median tokens/s and its ratio to the plain loop.

    python bench/token_batching.py --rounds 3

Variants: the plain loop in float32 (today's hand-written baseline) and in
bfloat16, the same loop with prompts sorted by length, and the pipeline
with default options (dtype auto) and with dtype float32 (batching alone).
"""
import argparse
import json
import os
import random
import statistics
import tempfile
import time

import torch

from beam_llm.testing.tiny_models import build_causal_lm
from beam_generate import generated_tokens  # bench/, the script's folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mixed_prompts(n: int, seed: int = 0) -> list:
  """n prompts of 40 to 1,600 characters, cut from the sample chats."""
  with open(os.path.join(ROOT, 'pipelines', 'data', 'chats.jsonl')) as f:
    text = ' '.join(json.loads(line)['history'] for line in f)
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    size = rng.randint(40, 1600)
    start = rng.randrange(0, max(len(text) - size, 1))
    out.append(text[start:start + size])
  return out


def plain_loop(model_dir, texts, new_tokens, dtype, batch=16, sort=False):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  start = time.perf_counter()
  tok = AutoTokenizer.from_pretrained(model_dir)
  tok.padding_side = 'left'
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
  if sort:
    texts = sorted(texts, key=len)
  tokens = 0
  for i in range(0, len(texts), batch):
    enc = tok(texts[i:i + batch], return_tensors='pt', padding=True)
    with torch.inference_mode():
      out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
    tokens += int((out[:, enc['input_ids'].shape[1]:] != tok.pad_token_id).sum())
  return tokens, time.perf_counter() - start


def pipeline(model_dir, texts, new_tokens, max_batch_tokens=None, **config):
  start = time.perf_counter()
  tokens = generated_tokens(
      texts, {'type': 'HuggingFace', 'config': {'model': model_dir, **config}},
      max_new_tokens=new_tokens, max_batch_tokens=max_batch_tokens)
  return tokens, time.perf_counter() - start


VARIANTS = {
    'plain loop, batch 16, arrival order, float32': lambda d, t, n: plain_loop(
        d, t, n, torch.float32),
    'plain loop, batch 16, arrival order, bfloat16': lambda d, t, n: plain_loop(
        d, t, n, torch.bfloat16),
    'plain loop, batch 16, sorted by length, float32': lambda d, t, n: plain_loop(
        d, t, n, torch.float32, sort=True),
    'GenerateText, default options (dtype auto)': lambda d, t, n: pipeline(
        d, t, n),
    'GenerateText, default options, dtype float32': lambda d, t, n: pipeline(
        d, t, n, dtype='float32'),
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--prompts', type=int, default=256)
  parser.add_argument('--new_tokens', type=int, default=64)
  parser.add_argument('--hidden', type=int, default=512)
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--only', nargs='*', help='variant name prefixes')
  parser.add_argument('--budgets', nargs='*', type=int, default=[],
                      help='also GenerateText with these max_batch_tokens')
  args = parser.parse_args()
  texts = mixed_prompts(args.prompts)
  variants = {k: v for k, v in VARIANTS.items()
              if not args.only or any(k.startswith(o) for o in args.only)}
  for budget in args.budgets:
    variants[f'GenerateText, max_batch_tokens {budget}'] = (
        lambda d, t, n, b=budget: pipeline(d, t, n, max_batch_tokens=b))
  rates = {k: [] for k in variants}
  with tempfile.TemporaryDirectory() as d:
    build_causal_lm(d, hidden_size=args.hidden, num_layers=args.layers,
                    vocab_size=32000)
    plain_loop(d, texts[:4], 2, torch.float32)  # Warm the file cache.
    for r in range(args.rounds):
      for name, fn in variants.items():
        tokens, seconds = fn(d, texts, args.new_tokens)
        rates[name].append(tokens / seconds)
        print(f'round {r + 1}: {name}: {tokens} tokens in {seconds:.1f}s = '
              f'{tokens / seconds:.0f} tokens/s', flush=True)
  base = statistics.median(rates[next(iter(rates))])
  print(f'\n{args.prompts} prompts of 40-1,600 characters, {args.new_tokens} new '
        f'tokens, Llama hidden {args.hidden} x {args.layers} layers, vocab 32000, '
        f'median of {args.rounds}')
  print('| variant | tokens/s (median) | ÷ first row |')
  print('|---|---|---|')
  for name, values in rates.items():
    median = statistics.median(values)
    print(f'| {name} | {median:.0f} | {median / base:.2f} |')


if __name__ == '__main__':
  main()
