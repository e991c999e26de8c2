"""SemanticTopK on the OpenAI-compatible fake server (the real `openai`
client), whose answers follow a known rule: the text with the higher
urgency is better. The exact top k comes out, in far fewer comparisons than
comparing every pair."""
import json
import math
import random
import re

import pytest

from beam_llm import SemanticTopK
from beam_llm.testing.fake_embedding_server import FakeEmbeddingServer
from tests.beam_helpers import run_transform
from tests.test_semantic_operators import openai


def urgency(text):
  return int(re.search(r'urgency (\d+)', text).group(1))


def more_urgent(prompt):
  first = re.search(r'<first>\n(.*?)\n</first>', prompt, re.S).group(1)
  second = re.search(r'<second>\n(.*?)\n</second>', prompt, re.S).group(1)
  better = 'first' if urgency(first) > urgency(second) else 'second'
  if '"reason"' in prompt:
    return json.dumps({'reason': f'urgency {max(urgency(first), urgency(second))}',
                       'better': better})
  return json.dumps({'better': better})


def tickets(n, regions=('north', 'south'), seed=7):
  scores = random.Random(seed).sample(range(1000), n)
  return [{'ticket': i, 'region': regions[i % len(regions)],
           'text': f'ticket {i}: the app fails, urgency {s}'}
          for i, s in enumerate(scores)]


def tournament_bound(n, k):
  return n - 1 + (k - 1) * math.ceil(math.log2(n))


def test_top_k_per_key_is_exact_in_far_fewer_calls_than_every_pair(llm_server):
  server = llm_server(reply=more_urgent)
  rows = tickets(80)
  out, types, metrics = run_transform(
      SemanticTopK(criterion='The more urgent ticket.', k=3, field='text',
                   group_by='region', model_handler=openai(server)),
      rows, metrics=True)
  for region in ('north', 'south'):
    group = [r for r in rows if r['region'] == region]
    best = sorted(group, key=lambda r: -urgency(r['text']))[:3]
    got = sorted((r for r in out['good'] if r.region == region),
                 key=lambda r: r.rank)
    assert [(r.ticket, r.rank) for r in got] == [
        (b['ticket'], i) for i, b in enumerate(best, 1)]
  calls = len(server.log)
  assert metrics['model_calls'] == calls
  assert metrics['dropped_rows'] == 80 - 6
  # Two groups of 40: a knockout (39) plus two short ones each, against
  # 40 x 39 / 2 = 780 per group for every pair.
  assert 2 * 39 < calls <= 2 * tournament_bound(40, 3)
  assert calls < 0.1 * 2 * (40 * 39 // 2)
  print(f'SemanticTopK 2 groups of 40, top 3: {calls} model calls, '
        f'every pair {2 * 40 * 39 // 2}')
  assert dict(types['good']._fields)['rank'] == int


def test_without_group_by_one_ranking_with_reasons(llm_server):
  server = llm_server(reply=more_urgent)
  rows = tickets(20)
  out, _ = run_transform(
      SemanticTopK(criterion='The more urgent ticket.', k=2, field='text',
                   reason_output='why', output='place',
                   model_handler=openai(server)), rows)
  best = sorted(rows, key=lambda r: -urgency(r['text']))[:2]
  got = sorted(out['good'], key=lambda r: r.place)
  assert [r.ticket for r in got] == [b['ticket'] for b in best]
  # The reason of the last comparison each row won (the fake names the winner's urgency).
  assert [r.why for r in got] == [f'urgency {urgency(b["text"])}' for b in best]
  assert len(server.log) <= tournament_bound(20, 2)


def test_a_failed_comparison_sends_its_group_to_errors_only(llm_server):
  def reply(prompt):
    return 'no idea' if 'south' in prompt else more_urgent(prompt)

  server = llm_server(reply=reply)
  rows = [{**r, 'text': f'{r["region"]}: {r["text"]}'} for r in tickets(12)]
  out, _ = run_transform(
      SemanticTopK(criterion='The more urgent ticket.', k=2, field='text',
                   group_by='region', model_handler=openai(server),
                   error_handling={'output': 'failed'}), rows)
  assert sorted(r.region for r in out['good']) == ['north', 'north']
  failed = out['failed']
  assert sorted(e.element.ticket for e in failed) == sorted(
      r['ticket'] for r in rows if r['region'] == 'south')
  assert all(e.msg.startswith('SemanticTopK (') and 'no idea' in e.msg
             for e in failed)
  assert not hasattr(failed[0].element, 'beam_llm_text')


def test_embedding_shortlist_compares_only_rows_near_the_criterion(llm_server):
  server = llm_server(reply=more_urgent)
  # Outage tickets lie near the criterion; the others point elsewhere.
  embeddings = FakeEmbeddingServer(
      dim=2, vector=lambda t: [1.0, 0.0] if 'outage' in t else [0.0, 1.0]).start()
  rows = [{'ticket': i, 'text': f'ticket {i}: {"outage" if i % 6 == 0 else "typo"}, '
           f'urgency {u}'} for i, u in enumerate(random.Random(3).sample(range(500), 30))]
  try:
    out, _ = run_transform(
        SemanticTopK(criterion='A service outage.', k=2, field='text',
                     embedding_model_handler={'type': 'OpenAICompatible', 'config': {
                         'model': 'e', 'base_url': embeddings.url + '/v1'}},
                     shortlist=5, model_handler=openai(server)), rows)
  finally:
    embeddings.stop()
  outages = [r for r in rows if 'outage' in r['text']]
  best = sorted(outages, key=lambda r: -urgency(r['text']))[:2]
  assert [r.ticket for r in sorted(out['good'], key=lambda r: r.rank)] == [
      b['ticket'] for b in best]
  shown = [t for p in server.prompts_answered()
           for t in re.findall(r'<(?:first|second)>\n(.*?)\n</', p, re.S)]
  assert shown and all('outage' in t for t in shown)
  assert len(server.log) <= tournament_bound(5, 2)


def test_options_are_checked_at_build(llm_server):
  server = llm_server(reply=more_urgent)
  with pytest.raises(ValueError, match="'k' must be at least 1"):
    SemanticTopK(criterion='x', k=0, field='text', model_handler=openai(server))
  with pytest.raises(ValueError, match="'shortlist' needs embedding_model_handler"):
    SemanticTopK(criterion='x', k=1, field='text', shortlist=3,
                 model_handler=openai(server))
  with pytest.raises(ValueError, match="'group_by'"):
    run_transform(SemanticTopK(criterion='x', k=1, field='text', group_by='nope',
                               model_handler=openai(server)), tickets(3))


def test_per_window_without_a_key(llm_server):
  import apache_beam as beam
  server = llm_server(reply=more_urgent)
  rows = [{**r, 'ts': i} for i, r in enumerate(tickets(12))]
  transform = (beam.Map(lambda r: beam.window.TimestampedValue(r, r.ts))
               | beam.WindowInto(beam.window.FixedWindows(6))
               | SemanticTopK(criterion='The more urgent ticket.', k=1, field='text',
                              model_handler=openai(server)))
  out, _ = run_transform(transform, rows)
  best = [max(rows[:6], key=lambda r: urgency(r['text'])),
          max(rows[6:], key=lambda r: urgency(r['text']))]
  assert sorted(r.ticket for r in out['good']) == sorted(b['ticket'] for b in best)
  assert len(server.log) == 2 * 5  # One knockout of 6 per window.


def test_contradicting_answers_still_give_k_distinct_rows_in_bounded_calls():
  from beam_llm.transforms.semantic._tournament import top_k
  rng = random.Random(0)
  calls = []

  def coin(pairs):  # A model that answers at random: cycles everywhere.
    calls.extend(pairs)
    return [rng.random() < 0.5 for _ in pairs]

  chosen, _ = top_k(50, 10, coin)
  assert len(set(chosen)) == 10
  assert len(calls) < 50 * 49 // 2
