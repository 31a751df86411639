"""GPT-2 language-model generator (a plain torch loop over transformers.GPT2LMHeadModel)."""
