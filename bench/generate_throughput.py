"""GenerateText pipeline throughput vs a plain `model.generate` loop.

Same random-weight Llama, same prompts (the sample chats in the
chat-sentiment prompt, repeated), same batch size, greedy, measured in one
run: generated tokens per second of (a) a Beam pipeline Create -> GenerateText
on the FnApiRunner and (b) a for-loop over batches calling model.generate.
Both timings include loading the model; the pipeline's also includes Beam's
own start-up and shutdown, so this is the end-to-end price of the pipeline.

    python bench/generate_throughput.py
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import jinja2
import torch

from beam_llm.testing.tiny_models import build_causal_lm
from beam_generate import generated_tokens  # bench/, the script's folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompts(repeats: int) -> list:
  with open(os.path.join(ROOT, 'pipelines', 'prompts', 'chat_sentiment.j2')) as f:
    template = jinja2.Template(f.read())
  with open(os.path.join(ROOT, 'pipelines', 'data', 'chats.jsonl')) as f:
    chats = [json.loads(line) for line in f]
  return [template.render(**c) for c in chats] * repeats


def plain_loop(model_dir, texts, batch_size, max_new_tokens):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  start = time.perf_counter()
  tok = AutoTokenizer.from_pretrained(model_dir)
  tok.padding_side = 'left'
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  tokens = 0
  for i in range(0, len(texts), batch_size):
    enc = tok(texts[i:i + batch_size], return_tensors='pt', padding=True)
    with torch.inference_mode():
      out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
    tokens += int((out[:, enc['input_ids'].shape[1]:] != tok.pad_token_id).sum())
  return tokens, time.perf_counter() - start


def pipeline(model_dir, texts, batch_size, max_new_tokens):
  start = time.perf_counter()
  tokens = generated_tokens(
      texts, {'type': 'HuggingFace', 'config': {'model': model_dir,
                                                'device': 'cpu'}},
      max_new_tokens=max_new_tokens, min_batch_size=batch_size,
      max_batch_size=batch_size)
  return tokens, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--hidden', type=int, default=512)
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=4)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--max_new_tokens', type=int, default=64)
  parser.add_argument('--pairs', type=int, default=3)
  args = parser.parse_args()
  texts = prompts(args.repeats)
  with tempfile.TemporaryDirectory() as d:
    build_causal_lm(d, hidden_size=args.hidden, num_layers=args.layers, vocab_size=32000)
    plain_loop(d, texts[:args.batch_size], args.batch_size, 4)  # Warm caches.
    rows = []
    for _ in range(args.pairs):  # Alternate, so drift hits both alike.
      for name, fn in (('plain model.generate loop', plain_loop),
                       ('GenerateText pipeline', pipeline)):
        tokens, seconds = fn(d, texts, args.batch_size, args.max_new_tokens)
        rows.append((name, tokens, seconds))
  print(f'{len(texts)} prompts, batch {args.batch_size}, {args.max_new_tokens} new '
        f'tokens, Llama hidden {args.hidden} x {args.layers} layers, vocab 32000')
  print('| pair | plain loop tokens/s | pipeline tokens/s | pipeline / plain |')
  print('|---|---|---|---|')
  ratios = []
  for k in range(args.pairs):
    (_, t1, s1), (_, t2, s2) = rows[2 * k], rows[2 * k + 1]
    ratios.append((t2 / s2) / (t1 / s1))
    print(f'| {k + 1} | {t1 / s1:.1f} ({t1} tokens, {s1:.1f}s) | '
          f'{t2 / s2:.1f} ({t2} tokens, {s2:.1f}s) | {ratios[-1]:.2f} |')
  print(f'\nmedian pipeline / plain tokens per second: {statistics.median(ratios):.2f}')


if __name__ == '__main__':
  main()
