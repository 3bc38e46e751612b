"""The stages of a run, in data-flow order: ingest -> tiles -> stitch -> vectorize/measure (plain functions)."""
