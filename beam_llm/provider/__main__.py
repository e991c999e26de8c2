"""`python -m beam_llm.provider` prints the providers file, for `include:`."""
from beam_llm.provider import PROVIDERS_FILE

print(PROVIDERS_FILE)
