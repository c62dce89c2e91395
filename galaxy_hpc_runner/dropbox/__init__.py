"""The submitting side: descriptions, templates, the spool, staging, pilots, the pass."""
