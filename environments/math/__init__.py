"""The math environment: single-turn questions graded by their final answer."""
