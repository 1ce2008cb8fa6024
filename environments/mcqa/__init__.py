"""The mcqa environment: multiple-choice questions graded by the chosen option letter."""
