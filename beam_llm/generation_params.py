"""GenerateText's generation parameters, decided once for every backend.

Each backend maps a `GenerationParams` onto its own request or generate
call; none of them decides again what the options mean. In particular
greedy vs sampling is decided here, once:

- `do_sample` given: it decides.
- otherwise `temperature` decides when set (0 is greedy, more samples);
- otherwise sampling is on when `top_p` (< 1) or `top_k` is set.

When sampling, an unset temperature is 1.0 (the model's distribution as it
is, what `top_p`/`top_k` alone mean on HuggingFace); when greedy, the
temperature sent to services is 0 and `top_p`/`top_k` are not sent.
"""
import dataclasses
from typing import Any, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class GenerationParams:
  max_new_tokens: Optional[int] = None
  temperature: Optional[float] = None
  top_p: Optional[float] = None
  top_k: Optional[int] = None
  do_sample: Optional[bool] = None
  generation_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  response_schema: Optional[Mapping[str, Any]] = None

  @classmethod
  def of(cls, generation: Mapping[str, Any]) -> 'GenerationParams':
    """From GenerateText's `generation` mapping (unknown keys ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dict(generation or {}).items() if k in names}
    values['generation_config'] = dict(values.get('generation_config') or {})
    return cls(**values)

  @property
  def sampling(self) -> bool:
    if self.do_sample is not None:
      return bool(self.do_sample)
    if self.temperature is not None:  # `temperature: 0` means greedy.
      return self.temperature > 0
    return (self.top_p is not None and self.top_p < 1) or self.top_k is not None

  @property
  def seed(self) -> Optional[int]:
    return self.generation_config.get('seed')

  @property
  def repeatable(self) -> bool:
    """Whether the same request gets the same answer (greedy, or seeded)."""
    return not self.sampling or self.seed is not None

  def sampling_options(self) -> dict:
    """temperature / top_p / top_k as services take them: the one meaning.

    Greedy: {'temperature': 0}. Sampling: the temperature (1.0 when unset)
    and top_p / top_k when set.
    """
    if not self.sampling:
      return {'temperature': 0.0}
    out = {'temperature': 1.0 if self.temperature is None else float(self.temperature)}
    if self.top_p is not None:
      out['top_p'] = self.top_p
    if self.top_k is not None:
      out['top_k'] = self.top_k
    return out
