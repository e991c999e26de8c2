"""Semantic operators: one-step LLM tasks (Classify, Extract, SemanticFilter,
SummarizePerKey) built from RenderPrompt, GenerateText and ParseJSON."""
