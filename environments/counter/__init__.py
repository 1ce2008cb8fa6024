"""The counter environment: the smallest whole environment (one tool, one reward rule)."""
