"""The alternatives resultcast is measured against (benchmarks/alternatives.py): small apps
built the way each library's documentation shows, serving the same clients the same events."""
