"""The k best of n items from pairwise comparisons, in few of them.

A knockout finds the best in n - 1 comparisons. The next best lost only to
items already chosen (anything that beat it is better), so each next round
is a knockout among those items only: about log2(n) of them. In all about
n - 1 + (k - 1) * log2(n) comparisons, against n(n - 1) / 2 for comparing
every pair; each round's matches are one batch of questions.
"""
from collections import defaultdict
from typing import Callable, List, Sequence, Tuple

# (a, b) pairs -> for each, whether a wins.
CompareBatch = Callable[[Sequence[Tuple[int, int]]], Sequence[bool]]


def top_k(n: int, k: int, compare: CompareBatch) -> Tuple[List[int], dict]:
  """The indices of the k best of items 0..n-1, best first, and for each
  chosen item the last match it won ((a, b) as asked), if any."""
  lost_to = defaultdict(set)
  last_win = {}

  def knockout(players: List[int]) -> int:
    while len(players) > 1:
      matches = [(players[i], players[i + 1])
                 for i in range(0, len(players) - 1, 2)]
      # Alternate which item is shown first, so that a model that prefers
      # one position does not favour the items that happen to sort first.
      asked = [m if i % 2 == 0 else m[::-1] for i, m in enumerate(matches)]
      winners = []
      for (a, b), a_wins in zip(asked, compare(asked)):
        winner, loser = (a, b) if a_wins else (b, a)
        lost_to[loser].add(winner)
        last_win[winner] = (a, b)
        winners.append(winner)
      players = winners + ([players[-1]] if len(players) % 2 else [])
    return players[0]

  chosen: List[int] = []
  remaining = list(range(n))
  candidates = remaining
  while remaining and len(chosen) < k:
    best = knockout(candidates)
    chosen.append(best)
    remaining = [i for i in remaining if i != best]
    done = set(chosen)
    candidates = [i for i in remaining if lost_to[i] <= done]
    if remaining and not candidates:
      # Answers that contradict each other (a beat b, b beat c, c beat a):
      # the items beaten by the fewest items not yet chosen.
      fewest = min(len(lost_to[i] - done) for i in remaining)
      candidates = [i for i in remaining if len(lost_to[i] - done) == fewest]
  return chosen, {i: last_win.get(i) for i in chosen}
