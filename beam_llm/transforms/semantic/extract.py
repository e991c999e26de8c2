"""Extract: a field -> the typed fields of a JSON Schema, in one step."""
from typing import Any, Mapping, Optional

from beam_llm import _config
from beam_llm import json_schema_types
from beam_llm.transforms.semantic import _base
from beam_llm.transforms.semantic import _options

_OWNER = 'Extract'


@_options.inherits_generate_options
class Extract(_base.SemanticOperator):
  """Extracts the fields of a JSON Schema from each row's text.

  RenderPrompt + GenerateText(`response_schema`) + ParseJSON in one step:
  the prompt (your instruction, the text, and the schema, whose
  `description`s the model reads) is written for you, the schema constrains
  the answer (constrained decoding on HuggingFace, structured output on
  OpenAICompatible and Gemini; other backends are only prompted for it), and
  the answer is parsed and validated like ParseJSON
  does. The schema's properties become typed fields of the output row
  (integer -> int, number -> float, string -> str, boolean -> bool, array ->
  list, object -> row; not required -> nullable), next to the input fields.

  Args:
    schema: The JSON Schema (inline) of the object to extract; its top level
      must be an object with `properties`. Give exactly one of `schema` and
      `schema_file`.
    schema_file: Path of a JSON file holding the schema.
    instruction: What to extract, in plain words, e.g. `Judge the
      customer's tone and summarize the chat.` Defaults to a generic request
      to fill in the schema.
    error_handling: `{output: <name>}` sends rows that fail to that output
      as error rows (`element` is the input row; `error_type` is the failing
      step's: `render`, a GenerateText type such as `prompt_too_long`, or a
      ParseJSON type: `truncated`, `empty`, `invalid_json`, `schema`).
  """
  opt_in = ('field', 'template', 'template_file', 'keep_fields',
            'prompt_output')  # _options.OPT_IN

  def __init__(
      self,
      schema: Optional[Mapping[str, Any]] = None,
      schema_file: Optional[str] = None,
      instruction: Optional[str] = None,
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    options = {k: v for k, v in locals().items()
               if k not in ('self', '__class__', 'generate_options')}
    schema = _config.load_json_schema(_OWNER, schema, schema_file)
    if schema.get('type') != 'object' or not schema.get('properties'):
      _config.fail(
          _OWNER, 'schema', 'must describe an object with properties '
          '(its properties become the output fields)')
    source = _base.content_source(_OWNER, generate_options)
    self._build(
        _OWNER, {**options, **generate_options},
        'You extract information from text. You answer with JSON only.',
        _base.literal(
            (instruction or 'Extract the information described by the JSON '
             'Schema below from the text.') + '\n\n') + source, schema,
        _FieldsDecider(json_schema_types.fields(schema)))


class _FieldsDecider(_base.Decider):
  def __init__(self, fields):
    self.output_fields = fields
