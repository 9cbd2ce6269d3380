"""Per-region ingestion: validate, decrypt, dedupe, dead-letter, aggregate, audit."""
