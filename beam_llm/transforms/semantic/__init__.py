"""Semantic operators: one-step LLM tasks (Classify, Extract, SemanticFilter,
SemanticMap, SummarizePerKey) built from RenderPrompt, GenerateText and ParseJSON."""
